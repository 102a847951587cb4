"""Human review answers in one SQLite file per dataset, and the summary the evaluation report reads.

One row per answer; WAL with synchronous=FULL, so an answer acknowledged to the browser survives a crash.
The rows carry everything the summary needs (which side was real, the model version), so it never needs the
review server's in-memory item table. Two kinds of question: `answers` (a real/generated pair: which is real,
and do both show the prompt?) and `prompt_answers` (one generated picture: does it show its prompt?). Each
takes one answer per item per reviewer; a second is refused (DuplicateAnswer), so the first answer stands.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from imagegen_pipeline.paths import DataPaths, validate_dataset_name

SCHEMA_VERSION = 3  # 2: `reviewer`, one answer per item per reviewer; 3: `prompt_answers`
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id            INTEGER PRIMARY KEY,
    item_id       TEXT    NOT NULL,                 -- random token the page showed
    model_name    TEXT    NOT NULL,                 -- imagegen-generator-<dataset>, or file:<path> for a bare export
    model_version TEXT    NOT NULL,                 -- registry version, or sha256[:16] of the file
    prompt        TEXT,                             -- label or caption asked for; NULL for an unconditional model
    seed          INTEGER NOT NULL,                 -- the generated image's seed
    real_sha256   TEXT,                             -- the real image's content hash (shards' sha256)
    real_side     TEXT    NOT NULL CHECK (real_side IN ('left', 'right')),
    answer        TEXT    NOT NULL CHECK (answer IN ('left', 'right')),  -- the side the person called real
    prompt_match  INTEGER CHECK (prompt_match IN (0, 1)),  -- "both match the prompt"; NULL without a prompt
    answered_at   TEXT    NOT NULL,                 -- UTC, ISO 8601
    reviewer      TEXT                              -- the page's signed cookie; NULL in version-1 files
);
CREATE INDEX IF NOT EXISTS answers_by_version ON answers (model_version);
CREATE TABLE IF NOT EXISTS prompt_answers (
    id            INTEGER PRIMARY KEY,
    item_id       TEXT    NOT NULL,                 -- random token the page showed
    model_name    TEXT    NOT NULL,
    model_version TEXT    NOT NULL,
    prompt        TEXT    NOT NULL,                 -- what the picture was generated for
    composite     INTEGER NOT NULL CHECK (composite IN (0, 1)),  -- one of ml/composite_prompts.py's prompts
    seed          INTEGER NOT NULL,
    shows         INTEGER NOT NULL CHECK (shows IN (0, 1)),      -- "does this picture show: <prompt>?"
    answered_at   TEXT    NOT NULL,
    reviewer      TEXT    NOT NULL,
    UNIQUE (item_id, reviewer)                      -- one answer per picture per reviewer
);
CREATE INDEX IF NOT EXISTS prompt_answers_by_version ON prompt_answers (model_version);
"""
ONE_PER_REVIEWER = "CREATE UNIQUE INDEX IF NOT EXISTS answers_one_per_reviewer ON answers (item_id, reviewer)"


class DuplicateAnswer(Exception):
    """This reviewer already answered this item."""


def reviews_db(paths: DataPaths, dataset: str) -> Path:
    """data/reviews/<dataset>/reviews.sqlite."""
    return paths.data / "reviews" / validate_dataset_name(dataset) / "reviews.sqlite"


@dataclass(frozen=True)
class Answer:
    item_id: str
    model_name: str
    model_version: str
    prompt: str | None
    seed: int
    real_sha256: str | None
    real_side: str
    answer: str
    prompt_match: bool | None
    reviewer: str | None = None


@dataclass(frozen=True)
class PromptAnswer:
    item_id: str
    model_name: str
    model_version: str
    prompt: str
    composite: bool
    seed: int
    shows: bool
    reviewer: str


class ReviewStore:
    """Appends answers; one short connection per write, so any server thread may call it."""

    def __init__(self, db_path: str | Path):
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            if "reviewer" not in {row[1] for row in conn.execute("PRAGMA table_info(answers)")}:  # a version-1 file
                conn.execute("ALTER TABLE answers ADD COLUMN reviewer TEXT")
            conn.execute(ONE_PER_REVIEWER)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10)
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def add(self, a: Answer) -> int:
        """Store one answer durably; return its row id. DuplicateAnswer if its reviewer answered the item already."""
        conn = self._connect()
        try:
            with conn:
                cur = conn.execute(
                    "INSERT INTO answers (item_id, model_name, model_version, prompt, seed, real_sha256, real_side, "
                    "answer, prompt_match, answered_at, reviewer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (a.item_id, a.model_name, a.model_version, a.prompt, int(a.seed), a.real_sha256, a.real_side,
                     a.answer, None if a.prompt_match is None else int(a.prompt_match),
                     datetime.now(timezone.utc).isoformat(timespec="milliseconds"), a.reviewer))
            return int(cur.lastrowid)
        except sqlite3.IntegrityError as exc:
            if "answers.item_id, answers.reviewer" in str(exc):
                raise DuplicateAnswer(a.item_id) from None
            raise
        finally:
            conn.close()


    def add_prompt(self, a: PromptAnswer) -> int:
        """Store one answer to a prompt question; DuplicateAnswer if its reviewer answered this picture already."""
        conn = self._connect()
        try:
            with conn:
                cur = conn.execute(
                    "INSERT INTO prompt_answers (item_id, model_name, model_version, prompt, composite, seed, shows, "
                    "answered_at, reviewer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (a.item_id, a.model_name, a.model_version, a.prompt, int(a.composite), int(a.seed), int(a.shows),
                     datetime.now(timezone.utc).isoformat(timespec="milliseconds"), a.reviewer))
            return int(cur.lastrowid)
        except sqlite3.IntegrityError as exc:
            if "prompt_answers.item_id, prompt_answers.reviewer" in str(exc):
                raise DuplicateAnswer(a.item_id) from None
            raise
        finally:
            conn.close()


def wilson_interval(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% interval for a rate from k of n (Wilson: sane at small n and at 0 or n)."""
    if n == 0:
        return None
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [round(max(0.0, (centre - half) / (1 + z * z / n)), 4), round(min(1.0, (centre + half) / (1 + z * z / n)), 4)]


def _rates(answers: int, fooled: int, pm_answers: int, pm_yes: int) -> dict:
    return {
        "answers": answers,  # real-vs-generated pairs answered
        "fooled": fooled,  # answers that called the generated image real
        "fooling_rate": round(fooled / answers, 4) if answers else None,  # 0.5 = indistinguishable
        "fooling_rate_ci95": wilson_interval(fooled, answers),
        # every yes/no on whether generated pictures show their prompt: pairs ("both?") and prompt questions
        "prompt_match_answers": pm_answers,
        "prompt_match_yes": pm_yes,
        "prompt_match_rate": round(pm_yes / pm_answers, 4) if pm_answers else None,
    }


def _questions(rows: list[tuple]) -> dict:
    """Prompt-question answers alone: rows of (prompt, composite, answers, yes)."""
    n, yes = sum(r[2] for r in rows), sum(r[3] for r in rows)
    by_prompt: dict[str, dict] = {}
    for prompt, composite, k, y in rows:
        got = by_prompt.setdefault(prompt, {"answers": 0, "yes": 0, "composite": bool(composite)})
        got["answers"] += k
        got["yes"] += y
    comp = [r for r in rows if r[1]]
    return {"answers": n, "yes": yes, "rate": round(yes / n, 4) if n else None,
            "rate_ci95": wilson_interval(yes, n),
            "composite_answers": sum(r[2] for r in comp), "composite_yes": sum(r[3] for r in comp),
            "by_prompt": by_prompt}


def review_summary(db_path: str | Path, *, model_version: str | None = None) -> dict:
    """Counts, human fooling rate and prompt-match rate, overall and per model version (only `model_version`'s
    answers if given); `prompt_questions`: the single-picture prompt questions alone, by prompt. A missing file
    is zero answers, not an error; the file is opened read-only."""
    path = Path(db_path)
    if not path.is_file():
        return {**_rates(0, 0, 0, 0), "items": 0, "by_model_version": {}, "prompt_questions": _questions([]),
                "first_answer_at": None, "last_answer_at": None}
    where, args = ("WHERE model_version = ?", (model_version,)) if model_version is not None else ("", ())
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT model_name, model_version, COUNT(*), SUM(answer != real_side), COUNT(prompt_match), "
            "COALESCE(SUM(prompt_match), 0), COUNT(DISTINCT item_id), MIN(answered_at), MAX(answered_at) "
            f"FROM answers {where} GROUP BY model_name, model_version ORDER BY MIN(answered_at)", args).fetchall()
        items = conn.execute(f"SELECT COUNT(DISTINCT item_id) FROM answers {where}", args).fetchone()[0]
        questions = []
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'prompt_answers'").fetchone():  # a v2 file: none
            questions = conn.execute(
                "SELECT model_name, model_version, prompt, composite, COUNT(*), SUM(shows), MIN(answered_at), "
                f"MAX(answered_at) FROM prompt_answers {where} GROUP BY model_name, model_version, prompt, composite "
                "ORDER BY MIN(answered_at)", args).fetchall()
    finally:
        conn.close()
    counts: dict[str, dict] = {}
    for name, version, n, fooled, pm_n, pm_yes, n_items, first, last in rows:
        counts[version] = {"model_name": name, "pairs": (n, fooled, pm_n, pm_yes), "items": n_items,
                           "first": first, "last": last, "questions": []}
    for name, version, prompt, composite, n, yes, first, last in questions:
        c = counts.setdefault(version, {"model_name": name, "pairs": (0, 0, 0, 0), "items": 0, "first": first,
                                        "last": last, "questions": []})
        c["questions"].append((prompt, composite, n, yes))
        c["first"], c["last"] = min(c["first"], first), max(c["last"], last)
    by_version = {}
    for version, c in counts.items():
        n, fooled, pm_n, pm_yes = c["pairs"]
        q = _questions(c["questions"])
        by_version[version] = {"model_name": c["model_name"],
                               **_rates(n, fooled, pm_n + q["answers"], pm_yes + q["yes"]),
                               "items": c["items"], "prompt_questions": q, "first_answer_at": c["first"],
                               "last_answer_at": c["last"]}
    total = _rates(*(sum(v[k] for v in by_version.values())
                     for k in ("answers", "fooled", "prompt_match_answers", "prompt_match_yes")))
    return {**total, "items": items, "by_model_version": by_version,
            "prompt_questions": _questions([q for c in counts.values() for q in c["questions"]]),
            "first_answer_at": min((v["first_answer_at"] for v in by_version.values()), default=None),
            "last_answer_at": max((v["last_answer_at"] for v in by_version.values()), default=None)}
