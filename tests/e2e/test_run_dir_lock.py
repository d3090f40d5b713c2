"""One run dir, one writer; output locations that cannot be written fail before anything starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.conftest import TINY
from tlcli import lock
from tlcli.cli import main

HOLD = "import sys, time; from tlcli import lock; lock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(600)"


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock on tmp_path/run, as a concurrent `tlcli fit` would."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield run, proc
    proc.kill()
    proc.wait()


def test_second_run_into_a_held_dir_fails_at_once_naming_the_holder(holder, imagefolder, capsys):
    run, proc = holder
    assert main(["fit", *TINY, "data=imagefolder", f"data.root={imagefolder}", f"hydra.run.dir={run}"]) == 2
    err = capsys.readouterr().err
    assert f"hydra.run.dir={run} is in use by another tlcli run (pid {proc.pid} on host {socket.gethostname()}" in err
    assert "give this run its own directory (hydra.run.dir=ANOTHER_DIR)" in err
    # nothing of the refused run was written: Hydra never started in the held dir
    assert sorted(p.name for p in run.iterdir()) == sorted([lock.HOLDER_NAME, lock.LOCK_NAME])
    assert json.loads((run / lock.HOLDER_NAME).read_text())["pid"] == proc.pid


def test_a_dead_holder_leaves_no_stale_lock(holder, imagefolder):
    run, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    code = main(["fit", *TINY, "data=imagefolder", f"data.root={imagefolder}", f"hydra.run.dir={run}"])
    assert code == 0
    assert (run / "metrics.json").is_file()
    assert not (run / lock.HOLDER_NAME).exists()  # released at the end of the run


def test_the_lock_is_reentrant_in_one_process_and_released_on_request(tmp_path):
    assert lock.acquire(tmp_path / "d") is True
    assert lock.acquire(tmp_path / "d") is False  # resume= in the same process: already ours
    lock.release(tmp_path / "d")
    probe = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(600)", "pass"), str(tmp_path / "d")])
    assert probe.returncode == 0  # free again for another process


def test_other_ranks_of_a_ddp_run_share_rank_zeros_dir(holder, monkeypatch):
    from tlcli.cli import _lock_run_dir

    run, _ = holder
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _lock_run_dir([f"hydra.run.dir={run}"]) is None


@pytest.mark.parametrize("where", ["/proc/tlcli-run", "/sys/tlcli-run"])
def test_run_dir_under_proc_or_sys_is_a_config_error(where, capsys):
    if not os.path.isdir(where.rsplit("/", 1)[0]):
        pytest.skip(f"no {where.rsplit('/', 1)[0]} on this system")
    assert main(["fit", f"hydra.run.dir={where}"]) == 2
    err = capsys.readouterr().err
    assert f"the output location {where} is not writable ({where.rsplit('/', 1)[0]}: " in err
    assert "set hydra.run.dir=DIR" in err
