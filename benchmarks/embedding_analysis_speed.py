"""How the embedding_analysis stage's time grows with the number of embeddings, side by side.

It runs every node of the embedding_analysis pipeline downstream of ``image_embeddings`` (PCA,
clustering, their scores, the summary and the figures), in the pipeline's own order, on generated
50-d embeddings at two sizes, and prints each node's wall and CPU seconds at both sizes and the
ratio large/small. A ratio near the size ratio means the node is linear in the rows; a ratio near
1 means it works on a capped sample (agglomerative clustering, the figures). Run it from the
repository root:

    python -m benchmarks.embedding_analysis_speed                      # 10,000 vs 100,000 rows
    python -m benchmarks.embedding_analysis_speed --rows 2000 20000    # a quick run

CPU seconds are shown beside wall seconds because on a shared machine the wall clock mostly
measures the neighbours; on such a machine ``OPENBLAS_NUM_THREADS=1`` also avoids BLAS threads
spinning against each other. Everything should take seconds at 100,000 rows.
"""

from __future__ import annotations

import time

import pandas as pd

from benchmarks import harness
from image_classification.pipelines.embedding_analysis import create_pipeline
from image_classification.pipelines.embedding_analysis.nodes import EmbeddingAnalysisConfig

# the generator the embedding_analysis tests use, so the benchmark times the data they check
from tests.pipelines.embedding_analysis.generated import embeddings_table

EMBEDDINGS = "image_embeddings"


def time_nodes(rows: int, seed: int = 42) -> pd.DataFrame:
    """Wall and CPU seconds of each node downstream of ``image_embeddings`` on ``rows`` embeddings."""
    data = {EMBEDDINGS: embeddings_table(rows, seed=0), "params:embedding_analysis": EmbeddingAnalysisConfig(),
            "params:seed": seed}
    timings = []
    for node in create_pipeline().from_inputs(EMBEDDINGS).nodes:  # topologically sorted
        wall, cpu = time.perf_counter(), time.process_time()
        data.update(node.run({name: data[name] for name in node.inputs}))
        timings.append((node.name, time.perf_counter() - wall, time.process_time() - cpu))
    return pd.DataFrame(timings, columns=["node", "wall_s", "cpu_s"]).set_index("node")


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__, raw=True)
    parser.add_argument("--rows", type=int, nargs=2, default=[10_000, 100_000], metavar=("SMALL", "LARGE"))
    args = parser.parse_args(argv)
    small, large = args.rows
    time_nodes(min(small, 1_000))  # warm-up: first imports and first figures are not the nodes' cost
    timings = {rows: time_nodes(rows) for rows in (small, large)}
    report = timings[small].join(timings[large], suffixes=(f"@{small:,}", f"@{large:,}"))
    report.loc["total"] = report.sum()
    report["wall ratio"] = report[f"wall_s@{large:,}"] / report[f"wall_s@{small:,}"]
    report["cpu ratio"] = report[f"cpu_s@{large:,}"] / report[f"cpu_s@{small:,}"]
    print(f"embedding_analysis nodes on {small:,} and {large:,} generated 50-d embeddings "
          f"(rows ratio {large / small:.1f}x)")
    print(report.to_string(float_format="%.2f"))
    harness.write_results(args.results_file, "embedding_analysis_speed", [
        {"arm": f"{node} @ {rows:,} rows", "wall_s": row["wall_s"], "cpu_s": row["cpu_s"]}
        for rows, table in timings.items() for node, row in table.iterrows()], args)


if __name__ == "__main__":
    main()
