"""Someone writes a smaller sample run (as the benchmarks do) and is told what DP3 cannot write."""

from __future__ import annotations

import pytest

from factor_archive.errors import FactorArchiveError
from factor_archive.ms.dp3 import dp3_available
from factor_archive.sample import MIN_DYSCO_TIMES, write_sample_run


@pytest.mark.skipif(not dp3_available(), reason="DP3 is not installed")
def test_too_few_time_slots_for_the_dysco_chunk_are_refused_before_anything_is_written(tmp_path):
    root = tmp_path / "run"
    with pytest.raises(FactorArchiveError, match=f"at least {MIN_DYSCO_TIMES} time slots"):
        write_sample_run(root, ntimes_per_chunk=MIN_DYSCO_TIMES - 1, dp3=True)
    assert not root.exists() or not any(root.iterdir())
