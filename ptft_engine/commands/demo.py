"""Run the whole workflow (shard, pre-train, export, fine-tune, compare) on bundled data."""

EXAMPLE = "Example: ptft demo --quick --out demo_out"


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help="smallest settings, finishes in about 2 minutes")
    p.add_argument("--out", default="demo_out", help="folder for everything the demo makes")


def run(args) -> int:
    print("ptft demo: not yet — the end-to-end demo lands with issue 6. Try `ptft env`.")
    return 0
