"""The CPU thread count: the rule (a fixed default, or what $SIBEATGAN_TORCH_THREADS says) and that select applies it."""

from __future__ import annotations

import pytest
import torch

from sibeatgan.device import DEFAULT_CPU_THREADS, THREADS_ENV, cpu_threads, select, set_cpu_threads
from sibeatgan.errors import ConfigError


@pytest.mark.parametrize(
    ("setting", "threads"),
    [
        (None, DEFAULT_CPU_THREADS),  # the default: whatever the machine's cores or load (the count changes the rounding)
        ("", DEFAULT_CPU_THREADS),
        ("3", 3),
        (" 2 ", 2),
        ("torch", None),  # torch's own count (one per core, or OMP_NUM_THREADS) left alone
        ("TORCH", None),
    ],
)
def test_thread_count_rule(setting, threads):
    assert DEFAULT_CPU_THREADS == 1
    assert cpu_threads(setting) == threads


@pytest.mark.parametrize("setting", ["0", "-2", "two", "1.5", "auto"])
def test_a_bad_thread_setting_is_a_one_line_error_naming_the_variable(setting):
    with pytest.raises(ConfigError, match=f"^{THREADS_ENV}: '{setting}' is not a positive integer or torch$"):
        cpu_threads(setting)


def test_select_on_the_cpu_sets_torchs_thread_count(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv(THREADS_ENV, raising=False)
        torch.set_num_threads(2)
        select("cpu")
        assert torch.get_num_threads() == DEFAULT_CPU_THREADS
        monkeypatch.setenv(THREADS_ENV, "3")
        assert set_cpu_threads() == 3 and torch.get_num_threads() == 3
        monkeypatch.setenv(THREADS_ENV, "torch")
        torch.set_num_threads(2)
        select("cpu")
        assert torch.get_num_threads() == 2  # left as it was
        monkeypatch.setenv(THREADS_ENV, "many")
        with pytest.raises(ConfigError, match=THREADS_ENV):
            select("cpu")
    finally:
        torch.set_num_threads(before)
