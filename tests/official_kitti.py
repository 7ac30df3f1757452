"""semantic-kitti-api's evaluator, re-implemented plainly for the tests (shares no code with rangecps).

The official ``auxiliary/np_ioueval.py`` ``iouEval``: ``conf[pred, gt]`` filled by ``np.add.at``; ``getStats``
zeroes the columns of ignored ground truth; ``getIoU`` averages ``tp / (tp + fp + fn + 1e-15)`` over every
non-ignored class (an absent class counts 0); ``getacc`` as the API.
"""

import numpy as np


class OfficialIouEval:
    """semantic-kitti-api's ``auxiliary/np_ioueval.py`` ``iouEval``, re-implemented plainly and independently of
    rangecps: ``conf[pred, gt]`` filled by ``np.add.at``; ``getStats`` zeroes the columns of ignored ground truth;
    ``getIoU`` averages ``tp / (tp + fp + fn + 1e-15)`` over every non-ignored class; ``getacc`` as the API."""

    def __init__(self, n_classes: int, ignore: list[int]) -> None:
        self.ignore = np.array(ignore, dtype=np.int64)
        self.include = np.array([c for c in range(n_classes) if c not in ignore], dtype=np.int64)
        self.conf_matrix = np.zeros((n_classes, n_classes), dtype=np.int64)

    def add_batch(self, pred: np.ndarray, gt: np.ndarray) -> None:
        np.add.at(self.conf_matrix, tuple(np.stack((pred.reshape(-1), gt.reshape(-1)), axis=0)), 1)

    def get_stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        conf = self.conf_matrix.copy()
        conf[:, self.ignore] = 0
        tp = np.diag(conf)
        return tp, conf.sum(axis=1) - tp, conf.sum(axis=0) - tp

    def get_iou(self) -> tuple[float, np.ndarray]:
        tp, fp, fn = self.get_stats()
        union = tp + fp + fn + 1e-15
        return float((tp[self.include] / union[self.include]).mean()), tp / union

    def get_acc(self) -> float:
        tp, fp, _ = self.get_stats()
        return float(tp.sum() / (tp[self.include].sum() + fp[self.include].sum() + 1e-15))
