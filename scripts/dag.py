"""Draw the workflow as SVG: every job (dag.svg) and one node per rule (rulegraph.svg).

    python scripts/dag.py                                   # default config, into results/
    python scripts/dag.py --configfile my.yaml -d run/      # a run's config and working directory
    python scripts/dag.py --graph rulegraph -o docs/        # only the rule graph, elsewhere

Runs `snakemake --dag` / `--rulegraph` on this repository's Snakefile (nothing is executed;
jobs already done are drawn dashed in the job graph) and renders the DOT text with
Graphviz `dot` (Debian: apt-get install graphviz). The same by hand:

    snakemake --dag | dot -Tsvg > results/dag.svg
    snakemake --rulegraph | dot -Tsvg > results/rulegraph.svg
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

SNAKEFILE = Path(__file__).resolve().parents[1] / "Snakefile"
GRAPHS = ("dag", "rulegraph")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", nargs="+", default=[], help="config file(s), as for snakemake")
    parser.add_argument("-d", "--directory", default=".", help="the run's working directory (default: here)")
    parser.add_argument("--graph", choices=GRAPHS, nargs="+", default=list(GRAPHS), help="graphs to draw")
    parser.add_argument("-o", "--out-dir", default="results",
                        help="where <graph>.svg goes, relative to the working directory unless absolute")
    return parser.parse_args(argv)


def snakemake_graph(graph: str, directory: Path, configfiles: list[str]) -> str:
    """The DOT text of `snakemake --<graph>` for the run in ``directory``."""
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(directory), f"--{graph}"]
    if configfiles:
        command += ["--configfile", *configfiles]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"snakemake --{graph} failed:\n{result.stderr}")
    return result.stdout


def render_svg(dot_text: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["dot", "-Tsvg", "-o", str(out)], input=dot_text, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"dot could not render {out}:\n{result.stderr}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if shutil.which("dot") is None:
        raise SystemExit("Graphviz `dot` is not installed (Debian/Ubuntu: apt-get install graphviz; "
                         "conda: conda install graphviz)")
    directory = Path(args.directory)
    out_dir = directory / args.out_dir
    configfiles = [str(Path(f).resolve()) for f in args.configfile]
    for graph in args.graph:
        out = out_dir / f"{graph}.svg"
        render_svg(snakemake_graph(graph, directory, configfiles), out)
        print(out)


if __name__ == "__main__":
    main()
