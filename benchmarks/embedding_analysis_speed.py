"""How long the embedding_analysis nodes take on 100,000 generated 50-d embeddings.

Not a test (timings depend on the machine): run it by hand and read the table,

    python -m tests.pipelines.embedding_analysis.speed_check [rows]

Everything but agglomerative clustering (which clusters a sample of at most
``agglomerative_max_samples``) should take seconds. CPU seconds are shown beside wall seconds
because on a shared machine the wall clock mostly measures the neighbours; on such a machine
``OPENBLAS_NUM_THREADS=1`` also avoids BLAS threads spinning against each other.
"""

from __future__ import annotations

import sys
import time

import pandas as pd

from image_classification.pipelines.embedding_analysis import nodes

from .generated import embeddings_table


def main(rows: int = 100_000) -> None:
    config = nodes.EmbeddingAnalysisConfig()
    table = embeddings_table(rows, seed=0)
    steps, timings = {}, []

    def timed(name, func, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        steps[name] = func(*args)
        timings.append((name, time.perf_counter() - wall, time.process_time() - cpu))
        return steps[name]

    basis, variance = timed("fit_pca_basis", nodes.fit_pca_basis, table)
    projection = timed("project_embeddings", nodes.project_embeddings, table, basis, config)
    assignments, models = timed("cluster_embeddings", nodes.cluster_embeddings, table, config, 42)
    metrics, composition = timed("score_clusters", nodes.score_clusters, assignments, table, models, config, 42)
    timed("summarise_embedding_space", nodes.summarise_embedding_space, table, variance, metrics)
    timed("plot_explained_variance", nodes.plot_explained_variance, variance)
    timed("plot_pca_scatter", nodes.plot_pca_scatter, projection, variance, config, 42)
    timed("plot_pca_scatter_3d", nodes.plot_pca_scatter_3d, projection, variance, config, 42)
    timed("plot_cluster_comparison", nodes.plot_cluster_comparison, projection, assignments, models, basis,
          metrics, composition, config, 42)
    report = pd.DataFrame(timings, columns=["node", "wall_s", "cpu_s"])
    print(f"{rows:,} embeddings x {len(nodes.embedding_columns(table))} dimensions")
    print(report.to_string(index=False, float_format="%.2f"))
    print(f"total {report['wall_s'].sum():.1f} s wall, {report['cpu_s'].sum():.1f} s CPU; GMM k={metrics['gmm']['clusters']} ARI {metrics['gmm']['ari']:.3f}; "
          f"agglomerative on {metrics['agglomerative']['points']:,} points ARI {metrics['agglomerative']['ari']:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
