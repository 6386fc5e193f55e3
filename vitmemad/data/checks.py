"""Check a dataset's files at set-up for what they claim to be, before any training.

Errors (a file that cannot be read) stop the run; doubtful inputs that still have a sensible reading are used and
reported with one warning per kind and dataset, naming the first file and giving the count:
- a lossy (JPEG) mask: binarised at ``io.LOSSY_MASK_THRESHOLD``, not at > 0 (compression noise would add area);
- a mask with values other than 0 and one positive level (anti-aliased or multi-class): every value > 0 is defect;
- an all-zero mask of an anomalous image: the image counts as anomalous, but none of its pixels do;
- an image smaller than ``MIN_SIDE`` px or more elongated than ``MAX_ASPECT``:1: it is stretched to the model's size.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import LOSSY_MASK_THRESHOLD, binarise_mask, image_size, mask_values, verify_image_file

log = logging.getLogger(__name__)

MIN_SIDE = 32
MAX_ASPECT = 4.0

MESSAGES = {
    "lossy_mask": "{n} mask(s) in a lossy format (first: {first}): binarised at >= {threshold} of 255, not at > 0; "
                  "save masks as PNG to keep them exact",
    "mask_levels": "{n} mask(s) hold values other than 0 and one positive level (first: {first}, values {detail}); "
                   "every value > 0 counts as defect",
    "empty_mask": "{n} anomalous image(s) have an all-zero mask (first: {first}): the image counts as anomalous, "
                  "none of its pixels do",
    "tiny": "{n} image(s) are smaller than {min_side} px on a side (first: {first}, {detail}): they are stretched to "
            "the model's input size",
    "elongated": "{n} image(s) are more elongated than {aspect:g}:1 (first: {first}, {detail}): they are stretched "
                 "to a square model input",
}


class Findings:
    """Counts per kind and the first file of each, reported once."""

    def __init__(self) -> None:
        self.kinds: OrderedDict[str, list] = OrderedDict()

    def add(self, kind: str, path: str | Path, detail: str = "") -> None:
        entry = self.kinds.setdefault(kind, [0, str(path), detail])
        entry[0] += 1

    def messages(self) -> list[str]:
        return [MESSAGES[kind].format(n=n, first=first, detail=detail, threshold=LOSSY_MASK_THRESHOLD,
                                      min_side=MIN_SIDE, aspect=MAX_ASPECT)
                for kind, (n, first, detail) in self.kinds.items()]

    def report(self, dataset: str) -> None:
        for message in self.messages():
            log.warning("%s: %s", dataset, message)


def check_image_shape(path: str, findings: Findings) -> None:
    w, h = image_size(path)
    if min(w, h) < MIN_SIDE:
        findings.add("tiny", path, f"{w}x{h}")
    if max(w, h) > MAX_ASPECT * max(min(w, h), 1):
        findings.add("elongated", path, f"{w}x{h}")


def check_mask(path: str, anomalous: bool, findings: Findings) -> None:
    values, lossy = mask_values(path)
    if lossy:
        findings.add("lossy_mask", path)  # its levels are compression noise
    else:
        levels = np.unique(values)
        if (levels > 0).sum() > 1:
            shown = ", ".join(str(v) for v in levels[:6].tolist()) + (" ..." if levels.size > 6 else "")
            findings.add("mask_levels", path, shown)
    if anomalous and not binarise_mask(values, lossy).any():
        findings.add("empty_mask", path)


def check_dataset(samples: Sequence, dataset: str = "dataset") -> Findings:
    """Every image and mask readable (``io.verify_image_file``), then the warnings above, once each."""
    findings = Findings()
    for s in samples:
        verify_image_file(s.path)
        check_image_shape(s.path, findings)
        if s.mask_path is not None:
            verify_image_file(s.mask_path)
            check_mask(s.mask_path, bool(s.label), findings)
    findings.report(dataset)
    return findings
