"""`python -m zoo.data {list,info,check} [NAME] [--data-dir DIR]`.

- list: every registered dataset with its example shape and dtype.
- info NAME: description, splits, the files it reads and where it looks.
- check [NAME]: load every split (of every dataset if NAME is left out);
  exit status 1, with the download command, if anything is missing or corrupt.
"""

import sys

from zoo.data.base import MissingDatasetError, download_command, load_dataset, resolve_data_dir
from zoo._cli import ArgumentParser, cli, message
from zoo.registry import get_dataset, list_datasets, provider


def _list(_args) -> int:
    names = list_datasets()
    width = max(map(len, names), default=0)
    for name in names:
        src = get_dataset(name)
        shape = "x".join(map(str, src.shape))
        print(f"{name:<{width}}  {src.dtype:<7}  {shape:<8}  {src.description.split('. ')[0].rstrip('.')}")
    return 0


def _info(args) -> int:
    src = get_dataset(args.name)
    data_dir = resolve_data_dir(args.data_dir)
    print(f"name:        {args.name}  (from {provider('dataset', args.name)})")
    print(f"description: {src.description}")
    print(f"example:     {src.dtype} {'x'.join(map(str, src.shape))}")
    print(f"splits:      {', '.join(src.splits)}")
    if src.binary:
        print("values:      0/1 (fixed binarisation; no dequantization)")
    if src.binarize:
        print(f"pipeline:    binarize={src.binarize!r} by default")
    if src.files:
        print(f"files:       {', '.join(src.files)}")
    if hasattr(src, "search_dirs"):
        print(f"looks in:    {', '.join(map(str, src.search_dirs(data_dir)))}")
        print(f"download:    {download_command(args.name, data_dir)}")
    return 0


def _check(args) -> int:
    names = [args.name] if args.name else list_datasets()
    failed = 0
    for name in names:
        src = get_dataset(name)
        try:
            sizes = [f"{s} {len(load_dataset(name, split=s, data_dir=args.data_dir))}" for s in src.splits]
        except MissingDatasetError as e:
            print(f"FAIL  {message(e)}", file=sys.stderr)  # the message starts with the name
            failed += 1
            continue
        verify = getattr(src, "verify", None)
        if callable(verify) and not verify():
            print(f"FAIL  {name}: bundled data does not match its recorded checksum", file=sys.stderr)
            failed += 1
            continue
        print(f"ok    {name}: {', '.join(sizes)}  ({src.dtype} {'x'.join(map(str, src.shape))})")
    return 1 if failed else 0


@cli("zoo.data")
def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m zoo.data", description="Inspect and check zoo's datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered datasets")
    for cmd, nargs, text in (("info", None, "describe one dataset"), ("check", "?", "load every split")):
        p = sub.add_parser(cmd, help=text)
        p.add_argument("name", nargs=nargs, metavar="NAME")
        p.add_argument("--data-dir", default=None, help="default: $ZOO_DATA_DIR, else ~/.cache/zoo/data")
    args = parser.parse_args(argv)
    return {"list": _list, "info": _info, "check": _check}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
