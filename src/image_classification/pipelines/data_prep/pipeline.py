"""Wiring of the data_prep pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    build_image_index,
    check_images,
    group_duplicates,
    list_image_candidates,
    split_images,
    summarise_splits,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=list_image_candidates,
                inputs=["params:data_prep.source", "demo_images"],
                outputs=["image_candidates", "skipped_files"],
                name="list_image_candidates",
            ),
            Node(
                func=check_images,
                inputs=["image_candidates", "skipped_files", "params:data_prep.image_checks", "params:runtime.dask"],
                outputs=["checked_images", "unreadable_images"],
                name="check_images",
            ),
            Node(
                func=group_duplicates,
                inputs=["checked_images", "unreadable_images", "params:data_prep.near_duplicate_max_distance"],
                outputs=["grouped_images", "rejected_images", "duplicate_report"],
                name="group_duplicates",
            ),
            Node(
                func=split_images,
                inputs=["grouped_images", "params:data_prep.split", "params:seed"],
                outputs="split_images",
                name="split_images",
            ),
            Node(
                func=build_image_index,
                inputs="split_images",
                outputs="image_index",
                name="build_image_index",
            ),
            Node(
                func=summarise_splits,
                inputs=["image_index", "rejected_images", "duplicate_report"],
                outputs="split_summary",
                name="summarise_splits",
            ),
        ],
        tags="data_prep",
    )
