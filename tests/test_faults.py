"""Runs that stop cleanly, with the real fault injected.

- A store that cannot be written (a full tmpfs, a read-only tmpfs, a folder this
  user may not write to, a file where a folder must be) stops `rmpm train` at the
  first failure, on the Dask engine and in
  the in-process loop: exit 2, one message naming the cause and the path, and the
  store keeps every complete entry and nothing half-written.
- A real SIGINT (to the process group, as a terminal's Ctrl-C) or SIGTERM to a real
  `rmpm train`, `rmpm calibrate` or `rmpm book`: exit 130 or 143, one line saying
  what is stored, no traceback, no worker, kernel or other child process left.
- Every command checks RMPM_STORE, RMPM_DATA and --store the same way, --dry-run too.

The tmpfs tests mount with `mount -t tmpfs` (root in a container that allows it);
where mounting is not permitted they are skipped, saying so.
"""
import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rmpm.cli import main
from rmpm.pipeline.store import StoreWriteError, write_error

#: every test here trains a model or runs a notebook (tests/conftest.py)
pytestmark = pytest.mark.trains

ROOT = Path(__file__).resolve().parents[1]
#: six tiny digits MLPs (a second each, cluster start-up included)
DIGITS = ["--profile", "smoke_multi", "--dataset", "digits", "--factor", "init_seed"]


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RMPM_SCHEDULER", "RMPM_STORE")}
    return {**env, "PYTHONPATH": str(ROOT), "RMPM_CACHE": str(tmp_path / "cache"),
            "PYTHONUNBUFFERED": "1", **extra}


def rmpm(tmp_path: Path, *args: str, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rmpm", *args], env=_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def error_lines(stderr: str, command: str) -> list[str]:
    return [l for l in stderr.splitlines() if l.startswith(f"rmpm {command}:")]


def committed(store: Path, kind: str = "models") -> list[Path]:
    return [d for d in (store / kind).glob("*/*") if d.is_dir() and not d.name.startswith(".")]


def temp_folders(store: Path) -> list[Path]:
    return [p for p in store.rglob(".tmp-*")]


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size)`` mounts a fresh tmpfs of ``size`` (e.g. "1m") and returns it."""
    mounted = []

    def mount(size: str = "1m") -> Path:
        d = tmp_path / f"mnt{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip()}); "
                        "these tests need root in a container that allows mount")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill(d: Path, leave: int = 8192) -> None:
    """Fill the file system of ``d`` up to ``leave`` free bytes (a real full disk)."""
    f = d / "filler"
    with open(f, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    os.truncate(f, max(0, f.stat().st_size - leave))


def remount(d: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(d)], check=True)


# ----------------------------------------------------------------------------- store faults

def test_each_cause_has_its_own_message(tmp_path):
    """The four causes side by side, each named with the path and its own remedy (each
    is also injected for real below: full and read-only tmpfs, no permission, a file
    in the way)."""
    target = tmp_path / "store" / "models"
    msgs = {}
    for code, cause in ((errno.ENOSPC, "full"), (errno.EROFS, "read-only"),
                        (errno.EACCES, "permission"), (errno.ENOTDIR, "not a directory")):
        e = write_error(OSError(code, os.strerror(code)), target)
        assert e.cause == cause and str(target) in str(e)
        msgs[cause] = e.remedy
    assert len(set(msgs.values())) == 4, msgs
    assert "Free disk space" in msgs["full"] and "Free disk space" not in msgs["read-only"]
    assert "read-write" in msgs["read-only"] and "permission" in msgs["permission"]
    assert "file out of the way" in msgs["not a directory"]
    # it survives the trip from a worker to the driver
    import pickle
    e = pickle.loads(pickle.dumps(write_error(OSError(errno.EROFS, "Read-only file system"),
                                              target).stopped("The run stopped there.")))
    assert isinstance(e, StoreWriteError) and e.cause == "read-only"
    assert str(e).endswith("The run stopped there.")


def _seed(tmp_path, store: Path) -> list[Path]:
    """One complete recipe (shard 0 of 6) in ``store``: what a failure must not remove."""
    r = rmpm(tmp_path, "train", *DIGITS, "--shard", "0/6", "--workers", "1", "--store", str(store))
    assert r.returncode == 0, r.stderr[-2000:]
    return committed(store) + committed(store, "evals")


def _assert_intact(tmp_path, store: Path, before: list[Path]) -> None:
    r = rmpm(tmp_path, "store", "verify", "--store", str(store))
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(before) <= set(committed(store) + committed(store, "evals"))
    assert temp_folders(store) == []


@pytest.mark.cluster
def test_full_disk_stops_the_run_at_the_first_failure(tmp_path, tmpfs):
    mnt = tmpfs("1m")
    store = mnt / "store"
    before = _seed(tmp_path, store)
    fill(mnt)
    r = rmpm(tmp_path, "train", *DIGITS, "--workers", "1", "--store", str(store))
    assert r.returncode == 2, r.stderr[-3000:]
    [msg] = error_lines(r.stderr, "train")
    assert msg.startswith(f"rmpm train: error: cannot write to the store at {store}")
    assert "No space left on device. Free disk space there" in msg
    assert "The run stopped there: 1 of 6 model(s) and 1 of 6 evaluation(s) are stored" in msg
    assert "Traceback" not in r.stderr and "distributed." not in r.stderr
    _assert_intact(tmp_path, store, before)
    assert len(committed(store)) == 1  # nothing trained after the disk was full


@pytest.mark.cluster
def test_a_file_in_the_way_stops_the_run_with_its_own_message(tmp_path):
    """A file where the store needs a folder, for a recipe in the middle of the run."""
    from rmpm.analysis.populations import profile_recipes
    store = tmp_path / "store"
    before = _seed(tmp_path, store)
    keys = [r.key() for r in profile_recipes("smoke_multi", datasets=["digits"],
                                             factors=["init_seed"])]
    blocker = store / "models" / keys[3][:2]
    assert not blocker.exists()
    blocker.write_text("in the way")
    r = rmpm(tmp_path, "train", *DIGITS, "--workers", "1", "--store", str(store))
    assert r.returncode == 2, r.stderr[-3000:]
    [msg] = error_lines(r.stderr, "train")
    assert f"cannot write to the store at {blocker}: {blocker} is a file, not a folder. " \
           "Move that file out of the way" in msg
    assert "Free disk space" not in msg and "The run stopped there:" in msg
    assert "Traceback" not in r.stderr
    blocker.unlink()
    _assert_intact(tmp_path, store, before)


@pytest.mark.cluster
def test_no_permission_stops_the_run_with_its_own_message(tmp_path):
    """A folder of the store this user may not write to, met in the middle of the run.
    Root may write anywhere, so the run is started without CAP_DAC_OVERRIDE (setpriv)
    and the store's models/ folder belongs to another user."""
    import shutil
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot run without CAP_DAC_OVERRIDE")
    store = tmp_path / "store"
    before = _seed(tmp_path, store)
    os.chown(store / "models", 65534, 65534)
    os.chmod(store / "models", 0o755)
    r = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                        "--inh-caps", "-dac_override,-dac_read_search", sys.executable, "-m",
                        "rmpm", "train", *DIGITS, "--workers", "1", "--store", str(store)],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    if r.returncode != 2 and r.stderr.startswith("setpriv:"):
        pytest.skip(f"dropping capabilities is not permitted here: {r.stderr.strip()}")
    assert r.returncode == 2, r.stderr[-3000:]
    [msg] = error_lines(r.stderr, "train")
    assert re.match(rf"rmpm train: error: cannot write to the store at {store / 'models'}/"
                    r"[0-9a-f]{2}: Permission denied\. Give this user write permission there",
                    msg), msg
    assert "The run stopped there: 1 of 6 model(s)" in msg and "Free disk space" not in msg
    assert "Traceback" not in r.stderr
    os.chown(store / "models", 0, 0)
    _assert_intact(tmp_path, store, before)
    assert len(committed(store)) == 1


def test_read_only_store_stops_train_and_book_before_any_work(tmp_path, tmpfs):
    mnt = tmpfs("1m")
    store = mnt / "store"
    (store / "models").mkdir(parents=True)
    remount(mnt, "ro")
    for cmd in (["train", *DIGITS], ["book", "--profile", "smoke_multi"]):
        r = rmpm(tmp_path, *cmd, "--workers", "1", **({"RMPM_STORE": str(store)}))
        assert r.returncode == 2, r.stderr[-3000:]
        [msg] = error_lines(r.stderr, cmd[0])
        assert msg == (f"rmpm {cmd[0]}: error: cannot write to the store at {store}: Read-only "
                       "file system. Remount that file system read-write, or point --store (or "
                       "the RMPM_STORE environment variable) at a writable folder; entries "
                       "finished so far are kept, and a rerun continues from them.")
    # reading a read-only store still works: the plan, and verify
    r = rmpm(tmp_path, "train", *DIGITS, "--dry-run", "--store", str(store))
    assert r.returncode == 0 and "to train" in r.stdout
    assert list(store.rglob("*")) == [store / "models"]


def test_in_process_loop_stops_at_the_first_failure(tmp_path, tmpfs):
    """``run_recipes(workers=0)``: a full disk, then a read-only one, mid-run."""
    from rmpm.analysis import populations as X
    from rmpm.pipeline.runs import run_recipes
    mnt = tmpfs("1m")
    store = mnt / "store"
    recipes = X.profile_recipes("smoke_multi", datasets=["digits"], factors=["init_seed"])
    spec = X.eval_spec("smoke_multi")
    run_recipes(recipes[:1], spec, store, "cpu", progress=False, workers=0, deterministic=False)
    fill(mnt)
    with pytest.raises(StoreWriteError) as e:
        run_recipes(recipes, spec, store, "cpu", progress=False, workers=0, deterministic=False)
    assert e.value.cause == "full" and "No space left on device" in str(e.value)
    assert "The run stopped there: 1 of 6 model(s) and 1 of 6 evaluation(s)" in str(e.value)
    assert len(committed(store)) == 1 and temp_folders(store) == []
    (mnt / "filler").unlink()
    remount(mnt, "ro")
    with pytest.raises(StoreWriteError) as e:
        run_recipes(recipes, spec, store, "cpu", progress=False, workers=0, deterministic=False)
    assert e.value.cause == "read-only" and e.value.path == store


# ----------------------------------------------------------------------------- signals

def _as_from_a_terminal() -> None:
    # a command started in a terminal gets SIGINT's default action; one started from a
    # background job (`cmd &` in a script, nohup) inherits "ignore", and Python then
    # never turns Ctrl-C into KeyboardInterrupt: these tests must not depend on how
    # pytest itself was started
    signal.signal(signal.SIGINT, signal.SIG_DFL)


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_run_outlives_its_test():
    """A test that fails before its signal lands must not leave its run going."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the run's whole session: its workers too
            proc.communicate(timeout=60)


def _start(tmp_path: Path, *args: str, **env) -> subprocess.Popen:
    # a session of its own: the test signals its whole process group, as a terminal does
    proc = subprocess.Popen([sys.executable, "-m", "rmpm", *args], env=_env(tmp_path, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, start_new_session=True,
                            preexec_fn=_as_from_a_terminal)
    _STARTED.append(proc)
    return proc


def _wait_for(cond, proc: subprocess.Popen, limit: float = 600) -> None:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - t0 < limit, "the run never got going"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen, sig: int, group: bool) -> tuple[str, str, list]:
    import psutil
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "a run on the engine has worker processes"
    (os.killpg if group else os.kill)(proc.pid, sig)
    out, err = proc.communicate(timeout=180)
    gone, alive = psutil.wait_procs(children, timeout=15)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    return out, err, alive


@pytest.mark.cluster
@pytest.mark.parametrize("sig,group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c-to-the-group", "sigterm-to-rmpm"])
def test_a_signal_stops_train_with_one_line(tmp_path, sig, group):
    store = tmp_path / "store"
    proc = _start(tmp_path, "train", "--profile", "smoke", "--device", "cpu", "--workers", "2",
                  "--store", str(store))
    _wait_for(lambda: committed(store), proc)  # training is under way
    out, err, alive = _stop(proc, sig, group)
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    [line] = error_lines(err, "train")
    assert line.startswith(f"rmpm train: stopped by {name}: ")
    assert line.endswith("the rest was not computed, and a rerun continues from there")
    models, total = map(int, re.search(r"(\d+) of (\d+) model\(s\)", line).groups())
    assert 1 <= models < total == 29 and models == len(committed(store))
    assert alive == [], f"processes left behind: {alive}"
    assert main(["store", "verify", "--store", str(store)]) == 0  # what is stored is whole


def test_a_signal_stops_calibrate_with_one_line(tmp_path):
    proc = _start(tmp_path, "calibrate", "--profile", "smoke", "--n-sim", "1000000")
    first = proc.stdout.readline()  # the design line: the simulations start after it
    assert first.startswith("profile smoke:"), first
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    [line] = error_lines(err, "calibrate")
    assert line == (f"rmpm calibrate: stopped by SIGINT: 0 scenario(s) simulated in this run "
                    f"are cached in {tmp_path / 'cache' / 'calibration'} (a rerun reuses them); "
                    "the others were not finished")


@pytest.mark.slow
def test_a_signal_stops_a_book_build_with_one_line_and_no_build_left(tmp_path):
    """SIGTERM while the build trains: nothing that looks like a build is left."""
    from rmpm.book.builds import builds_root, latest_build
    store = tmp_path / "store"
    before = latest_build("smoke")
    existing = set((builds_root() / "smoke").glob("*"))
    proc = _start(tmp_path, "book", "--profile", "smoke", "--workers", "2",
                  RMPM_STORE=str(store))
    _wait_for(lambda: committed(store), proc)
    out, err, alive = _stop(proc, signal.SIGTERM, True)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    [line] = error_lines(err, "book")
    assert line.startswith("rmpm book: stopped by SIGTERM: ")
    assert re.search(r"\d+ of 29 model\(s\) and \d+ of 29 evaluation\(s\) are stored", line)
    assert "(no notebook had run) and is discarded; the latest smoke build is still " \
           f"{before.id if before else 'none'}" in line
    assert set((builds_root() / "smoke").glob("*")) == existing  # no partial folder left
    assert latest_build("smoke") == before
    assert alive == [], f"processes left behind: {alive}"


# ----------------------------------------------------------------------------- settings

COMMANDS = [["train", "--profile", "smoke", "--dry-run"], ["train", "--profile", "smoke"],
            ["book", "--profile", "smoke"], ["store", "ls"], ["store", "verify"],
            ["verify", "manifest.json"], ["calibrate", "--profile", "smoke", "--n-sim", "1"],
            ["data", "digits"], ["env"]]


@pytest.mark.parametrize("var", ["RMPM_STORE", "RMPM_DATA", "RMPM_CACHE"])
def test_every_command_refuses_a_file_as_a_folder_setting(tmp_path, monkeypatch, capsys, var):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for v in ("RMPM_STORE", "RMPM_DATA"):
        monkeypatch.setenv(v, str(tmp_path / v.lower()))
    monkeypatch.setenv("RMPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(var, str(a_file))
    for cmd in COMMANDS:
        assert main(cmd) == 2, cmd
        assert capsys.readouterr().err == (
            f"rmpm {cmd[0]}: error: {var}={a_file} is a file, not a folder; point {var} at a "
            f"folder (it is created if missing), or unset {var}\n"), cmd
    monkeypatch.setenv(var, str(a_file / "sub"))  # a folder inside a file
    assert main(COMMANDS[0]) == 2
    assert f"{var}={a_file / 'sub'} is inside {a_file}, which is a file" in capsys.readouterr().err
    assert a_file.read_text() == "not a folder" and not (tmp_path / "rmpm_store").exists()


def test_store_option_is_checked_the_same_way(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for cmd in (["train", "--profile", "smoke", "--dry-run"], ["store", "ls"],
                ["verify", "manifest.json"]):
        assert main([*cmd, "--store", str(a_file)]) == 2
        assert capsys.readouterr().err == (
            f"rmpm {cmd[0]}: error: --store={a_file} is a file, not a folder; point --store at "
            "a folder (it is created if missing)\n")


@pytest.mark.cluster
def test_repair_on_a_read_only_store_is_one_line(tmp_path, tmpfs):
    """Any OS write error no retry fixes is one line, not a traceback: here `store
    verify --repair`, which moves a damaged entry into quarantine/, on a read-only store."""
    mnt = tmpfs("1m")
    store = mnt / "store"
    [model, _] = _seed(tmp_path, store)
    (model / "metrics.json").write_text("{}")  # damaged
    remount(mnt, "ro")
    r = rmpm(tmp_path, "store", "verify", "--repair", "--store", str(store))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    [line] = error_lines(r.stderr, "store")
    assert line == f"rmpm store: error: Read-only file system: {store / 'quarantine'}"
    assert model.is_dir()  # nothing moved


@pytest.mark.slow
def test_ctrl_c_during_the_notebooks_stops_a_book_build(tmp_path):
    """Ctrl-C while a notebook's kernel runs: one line, no kernel or worker left (the
    kernel is killed, so it prints no traceback of its own), no build left behind."""
    from rmpm.book.builds import builds_root, latest_build
    store = tmp_path / "store"
    r = rmpm(tmp_path, "train", "--profile", "smoke", "--store", str(store), timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    before = latest_build("smoke")
    existing = set((builds_root() / "smoke").glob("*"))
    proc = _start(tmp_path, "book", "--profile", "smoke", "--workers", "1",
                  RMPM_STORE=str(store))
    started = 0
    while started < 2:  # the second notebook is running
        line = proc.stdout.readline()
        assert line, proc.communicate()[1][-3000:]
        started += "[rmpm book] executing" in line
    time.sleep(3)
    out, err, alive = _stop(proc, signal.SIGINT, True)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    [line] = error_lines(err, "book")
    assert line.startswith("rmpm book: stopped by SIGINT: 29 of 29 model(s) and 29 of 29 "
                           "evaluation(s) are stored")
    from rmpm.book.notebooks import notebook_paths
    assert f"(1 of {len(notebook_paths())} notebook(s) had run) and is discarded" in line
    assert set((builds_root() / "smoke").glob("*")) == existing
    assert latest_build("smoke") == before
    assert alive == [], f"processes left behind: {alive}"
