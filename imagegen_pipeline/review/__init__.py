"""Human review: people tell real from generated images in a browser; answers land in SQLite per dataset.

`review_summary(db_path)` (store.py) is the one function the evaluation report needs."""

from imagegen_pipeline.review.store import review_summary, reviews_db

__all__ = ["review_summary", "reviews_db"]
