"""``embzip compress`` / ``decompress`` / ``inspect``: .npy arrays and frame files."""

from __future__ import annotations

import json

from ._args import load_npy, non_negative_int, positive_float

__all__ = ["add_compress", "add_decompress", "add_inspect"]


def _add_bound_args(p, required: bool):
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--abs-error", type=positive_float, metavar="X",
                       help="every finite element decodes within X")
    group.add_argument("--rel-error", type=positive_float, metavar="X",
                       help="the bound is X * (max - min) of the finite values")


def _read_frame(path: str) -> bytes:
    """A frame file's bytes; anything that does not start like a frame is refused before it is
    read whole (``/dev/zero`` or a huge unrelated file would fill the memory first)."""
    from embzip.errors import FormatError
    from embzip.format.ids import MAGIC

    with open(path, "rb") as fh:
        head = fh.read(len(MAGIC))
        if head != MAGIC:
            raise FormatError(f"{path} is not an embzip frame: it starts with {head!r}, expected {MAGIC!r}")
        return head + fh.read()


def _info_dict(info) -> dict:
    """A :class:`embzip.FrameInfo` as plain JSON types."""
    return {"dtype": str(info.dtype), "shape": list(info.shape), "error_mode": info.error_mode,
            "error_value": info.error_value, "abs_error": info.abs_error,
            "strategy": info.strategy, "stages": list(info.stages), "sections": info.sections,
            "raw_size": info.raw_size, "frame_size": info.frame_size,
            "unique_rows": info.unique_rows, "ratio": info.ratio}


def _shape_text(shape) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


def add_compress(subparsers):
    p = subparsers.add_parser("compress", help="compress a .npy float array into a frame",
                              description="Compress IN.npy (float32/float64) into the frame OUT.")
    p.add_argument("input", metavar="IN.npy")
    p.add_argument("output", metavar="OUT.ezf")
    _add_bound_args(p, required=True)
    p.add_argument("--strategy", choices=("fast", "compact", "auto"), default="auto",
                   help="fast: bit-pack; compact: rANS; auto: pick per stream (default)")
    p.add_argument("--json", action="store_true", help="print the frame's header as JSON")
    p.set_defaults(func=_run_compress)


def _run_compress(args) -> int:
    import embzip
    data = load_npy(args.input)
    frame = embzip.compress(data, abs_error=args.abs_error, rel_error=args.rel_error,
                            strategy=args.strategy)
    # compress fully before opening OUT: a failure leaves no half-written file behind
    with open(args.output, "wb") as fh:
        fh.write(frame.tobytes())
    info = embzip.inspect(frame)
    if args.json:
        print(json.dumps({"input": args.input, "output": args.output, **_info_dict(info)}))
    else:
        print(f"{args.input} -> {args.output}: {info.dtype} {_shape_text(info.shape)}, "
              f"{info.raw_size} -> {info.frame_size} bytes (ratio {info.ratio:.2f}x), "
              f"abs_error {info.abs_error:.6g}, {' '.join(info.stages)}")
    return 0


def add_decompress(subparsers):
    p = subparsers.add_parser("decompress", help="decode a frame into a .npy file",
                              description="Decode the frame IN into OUT.npy (original dtype "
                                          "and shape).")
    p.add_argument("input", metavar="IN.ezf")
    p.add_argument("output", metavar="OUT.npy")
    p.add_argument("--no-verify", action="store_true", help="skip the payload CRC32C check")
    p.add_argument("--max-bytes", type=non_negative_int, default=None, metavar="N",
                   help="refuse a frame that decodes to more than N bytes (a frame of a few bytes "
                        "may declare 2**48 values)")
    p.set_defaults(func=_run_decompress)


def _run_decompress(args) -> int:
    import numpy as np
    import embzip
    array = embzip.decompress(_read_frame(args.input), verify=not args.no_verify, max_bytes=args.max_bytes)
    with open(args.output, "wb") as fh:  # a handle: np.save(path) would append ".npy"
        np.save(fh, array, allow_pickle=False)
    return 0


def add_inspect(subparsers):
    p = subparsers.add_parser("inspect", help="show a frame's header, stages, sizes and ratio",
                              description="Read a frame's header (checked by its CRC; the "
                                          "payload is not decoded).")
    p.add_argument("input", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the header as one JSON object")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args) -> int:
    import embzip
    info = embzip.inspect(_read_frame(args.input))
    if args.json:
        print(json.dumps({"file": args.input, **_info_dict(info)}))
        return 0
    bound = f"{info.error_mode} {info.error_value:.6g}"
    lines = [f"file:        {args.input}",
             f"array:       {info.dtype} {_shape_text(info.shape)}",
             f"bound:       {bound} (every finite element within {info.abs_error:.9g})",
             f"strategy:    {info.strategy}",
             f"stages:      {' -> '.join(info.stages)}",
             "sections:    " + ", ".join(f"{k} {v} B" for k, v in info.sections.items()),
             f"size:        {info.raw_size} -> {info.frame_size} bytes "
             f"(ratio {info.ratio:.2f}x)"]
    if info.unique_rows is not None:  # deduplicated: rows are all axes but the last
        rows = info.raw_size // (info.dtype.itemsize * info.shape[-1])
        lines.append(f"unique rows: {info.unique_rows} of {rows}")
    print("\n".join(lines))
    return 0
