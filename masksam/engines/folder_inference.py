# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Folder inference that survives a bad case: each good case is written, each bad one reported, nothing overwritten.

Three pieces, wired by a bundle's ``inference.yaml``:

- :class:`TolerantDataset`: a MONAI ``Dataset`` whose per-case load or preprocessing error (an unreadable or
  invalid image) becomes an item naming the case and the reason, in the DataLoader worker, instead of an error
  that stops the DataLoader and the run.
- :class:`CaseReport`: the evaluator's ``iteration_update`` and a handler. It runs MONAI's own iteration
  for each good item; an item that failed to load, or whose inference or post-processing (``Invertd``,
  ``SaveImaged``) raises, is logged and recorded, and the next case goes on. :meth:`CaseReport.finish`, run after
  the evaluator, writes the problems to a CSV beside the outputs and ends with a summary; the exit status is 1
  when a case failed.
- :class:`NewFilesLayout`: ``SaveImaged``'s ``folder_layout`` that refuses to replace an existing file: such a
  case is skipped (reported, not a failure), so a re-run into the same folder writes only what is missing.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from ignite.engine import Engine, Events
from monai.data import Dataset, FolderLayout
from monai.engines import Workflow

from masksam.engines.errors import describe_failure, exception_chain

__all__ = ["CASE_ERROR_KEY", "CaseReport", "NewFilesLayout", "OutputExistsError", "TolerantDataset"]

logger = logging.getLogger(__name__)

#: Key of the reason in an item that failed to load (:class:`TolerantDataset`); the case is under ``"case"``.
CASE_ERROR_KEY = "case_error"


def _case_name(value: Any) -> str:
    """A case's file name(s) as one string."""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _without_prefix(reason: str, case: str) -> str:
    """``reason`` without a leading repeat of the case's file name (this package's messages start with it)."""
    return reason[len(case) :].lstrip() if reason.startswith(case + " ") else reason


class TolerantDataset(Dataset):
    """``monai.data.Dataset`` whose per-case transform errors become ``{"case": <file>, CASE_ERROR_KEY: <reason>}``.

    The reason is :func:`masksam.engines.describe_failure` of the error (for this package's checks, the message
    naming the file, key and value). The error is caught where the transform runs (a DataLoader worker too), so
    it neither stops the DataLoader nor is printed by each worker. Load it with ``batch_size=1`` (a failed item
    does not collate with loaded ones), as the bundles' inference does.

    Args:
        data: the items (dicts holding ``image_key``).
        transform: the per-item preprocessing.
        image_key: the key that names the case.
    """

    def __init__(self, data: Any, transform: Any = None, image_key: str = "image") -> None:
        super().__init__(data=data, transform=transform)
        self.image_key = image_key

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except Exception as exc:
            item = self.data[index]
            case = item.get(self.image_key, item) if isinstance(item, Mapping) else item
            return {"case": _case_name(case), CASE_ERROR_KEY: describe_failure(exc)}


class OutputExistsError(FileExistsError):
    """An output file exists already: the case is skipped, never overwritten."""


class NewFilesLayout(FolderLayout):
    """MONAI's ``FolderLayout`` (arguments the same) that raises :class:`OutputExistsError` for an existing file.

    Give it to ``SaveImaged(folder_layout=...)``; the file name is MONAI's (``<output_dir>/<name>_<postfix><ext>``,
    sub-folders of ``data_root_dir`` kept).
    """

    def filename(self, subject: Any = "subject", idx: Any = None, **kwargs: Any) -> Any:
        path = super().filename(subject=subject, idx=idx, **kwargs)
        if os.path.exists(path):
            raise OutputExistsError(
                f"{path} exists: not overwritten (delete it, or set --output_dir to another folder, to redo the case)"
            )
        return path


@dataclass(frozen=True)
class _Problem:
    case: str
    status: str  # "failed" or "skipped"
    reason: str


class CaseReport:
    """Per-case errors of folder inference: logged, listed in a CSV beside the outputs, summarised at the end.

    Use one instance as the ``SupervisedEvaluator``'s ``iteration_update`` and among its handlers, and call
    :meth:`finish` after ``evaluator.run()``.

    Args:
        output_dir: the folder of the outputs; the CSV is written there.
        image_key: the key of the image in a batch (its metadata name the case).
        csv_name: the CSV's file name; an existing file of that name is kept and ``_2``, ``_3``... added.
    """

    def __init__(
        self, output_dir: str | os.PathLike[str], image_key: str = "image", csv_name: str = "failed_cases.csv"
    ):
        if not csv_name.endswith(".csv"):
            raise ValueError(f"csv_name must end with .csv, got {csv_name!r}")
        self.output_dir = os.fspath(output_dir)
        self.image_key = image_key
        self.csv_name = csv_name
        self.problems: list[_Problem] = []
        self.num_cases = 0

    def attach(self, engine: Engine) -> None:
        """Start each run with an empty record."""
        engine.add_event_handler(Events.STARTED, self._reset)

    def _reset(self, engine: Engine) -> None:
        self.problems = []
        self.num_cases = 0

    def _batch_case(self, batch: Mapping[Hashable, Any]) -> str:
        if "case" in batch:
            return _case_name(batch["case"])
        meta = getattr(batch.get(self.image_key), "meta", None) or {}
        return _case_name(meta.get("filename_or_obj", "<unnamed case>"))

    def _record(self, case: str, status: str, reason: str) -> None:
        self.problems.append(_Problem(case, status, reason))
        log = logger.warning if status == "skipped" else logger.error
        log("case %s %s: %s (the run goes on with the next case)", case, status, reason)

    def __call__(self, engine: Workflow, batch: Mapping[Hashable, Any]) -> Any:
        """One iteration: MONAI's own (inference, post-processing, saving), or a recorded failure."""
        self.num_cases += 1
        case = self._batch_case(batch)
        if CASE_ERROR_KEY in batch:
            self._record(case, "failed", _case_name(batch[CASE_ERROR_KEY]))
            return {}
        try:
            return engine._iteration(engine, batch)  # the evaluator's default iteration_update
        except Exception as exc:
            if any(isinstance(e, OutputExistsError) for e in exception_chain(exc)):
                self._record(case, "skipped", describe_failure(exc))
            else:
                self._record(case, "failed", describe_failure(exc))
            return {}

    def _csv_path(self) -> str:
        stem = self.csv_name[: -len(".csv")]
        path, n = os.path.join(self.output_dir, self.csv_name), 1
        while os.path.exists(path):
            n += 1
            path = os.path.join(self.output_dir, f"{stem}_{n}.csv")
        return path

    def summary(self, csv_path: str | None = None) -> str:
        """What the run did: cases written, skipped and failed (each with its file and reason)."""
        failed = [p for p in self.problems if p.status == "failed"]
        skipped = [p for p in self.problems if p.status == "skipped"]
        written = self.num_cases - len(self.problems)
        head = f"inference: {self.num_cases} case(s): {written} written to {self.output_dir}"
        if skipped:
            head += f", {len(skipped)} skipped (outputs exist, not overwritten)"
        if failed:
            head += f", {len(failed)} FAILED"
        if csv_path:
            head += f"; listed in {csv_path}"
        lines = [head] + [f"  {p.status}: {p.case}: {_without_prefix(p.reason, p.case)}" for p in failed + skipped]
        return "\n".join(lines)

    def finish(self) -> None:
        """Write the CSV (when a case was skipped or failed) and end with the summary.

        Raises:
            SystemExit: with the summary (printed to stderr, exit status 1) when a case failed.
        """
        csv_path = None
        if self.problems:
            os.makedirs(self.output_dir, exist_ok=True)
            csv_path = self._csv_path()
            with open(csv_path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["file", "status", "reason"])
                writer.writerows([p.case, p.status, p.reason] for p in self.problems)
        text = self.summary(csv_path)
        if any(p.status == "failed" for p in self.problems):
            raise SystemExit(text)
        logger.info("%s", text)
