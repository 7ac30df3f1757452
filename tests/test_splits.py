"""Labeled splits: shipped lists, nested seeded sampling, disjoint unlabeled rest."""

from pathlib import Path

import pytest

from rangecps.data.splits import SplitError, make_split, parse_ratio, read_published_list, sample_nested

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
KITTI_TRAIN_SEQS = ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10")


def test_parse_ratio() -> None:
    assert parse_ratio("10%") == pytest.approx(0.1)
    assert parse_ratio("0.2") == pytest.approx(0.2)
    assert parse_ratio("100%") == 1.0
    for bad in ("0%", "150%", "ten", "-1"):
        with pytest.raises(ValueError, match="labeled share"):
            parse_ratio(bad)


@pytest.mark.parametrize(
    ("name", "lines"), [("semantickitti", (191, 1913, 3826, 9565)), ("nuscenes", (281, 2813, 5626, 14065))]
)
def test_shipped_lists_parse(name: str, lines: tuple[int, ...]) -> None:
    for pct, n in zip((1, 10, 20, 50), lines, strict=True):
        ids = read_published_list(f"{name}_{pct}pct.txt")
        assert len(ids) == len(set(ids)) == n
        if name == "semantickitti":
            assert all(len(i) == 9 and i[2] == "/" and i[:2] in KITTI_TRAIN_SEQS for i in ids)
        else:
            assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is absent in a user's clone")
def test_shipped_lists_equal_shared() -> None:
    for f in sorted((SHARED / "splits").glob("*.txt")):
        assert read_published_list(f.name) == f.read_text().split()


def test_sampler_nested_disjoint_deterministic() -> None:
    ids = [f"{s:02d}/{i:06d}" for s in range(3) for i in range(400)]
    prev: set[str] = set()
    for ratio in ("1%", "10%", "20%", "50%"):
        split = make_split("synthetic_kitti", ids, ratio, seed=3)
        lab = set(split.labeled)
        assert prev <= lab
        assert lab.isdisjoint(split.unlabeled) and len(lab) + len(split.unlabeled) == len(ids)
        assert len(lab) == round(parse_ratio(ratio) * len(ids))
        prev = lab
    assert sample_nested(ids, 0.1, 3) == sample_nested(ids, 0.1, 3)
    assert sample_nested(ids, 0.1, 3) != sample_nested(ids, 0.1, 4)
    assert len(sample_nested(ids[:5], 0.01, 0)) == 1


def test_real_dataset_uses_shipped_list_and_reports_missing() -> None:
    wanted = read_published_list("semantickitti_1pct.txt")
    train = sorted(set(wanted) | {"00/999999"})
    split = make_split("scribblekitti", train, "1%")
    assert set(split.labeled) == set(wanted) and split.unlabeled == ("00/999999",)
    assert split.source == "semantickitti_1pct.txt"
    with pytest.raises(SplitError, match=r"semantickitti_1pct.txt: 2 of 191 labeled scans are not in"):
        make_split("semantickitti", train[2:], "1%")
    # Unpublished ratios on a real dataset fall back to the sampler.
    assert make_split("semantickitti", train, "5%").source.startswith("sampler")
