"""scripts/lab.py: kernel choice, guest script, exit-status logic, process-group handling."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _load_lab() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ipsecd_lab_runner", ROOT / "scripts" / "lab.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


lab = _load_lab()


def _plan(tmp_path: Path, command: tuple[str, ...] = ("true",), **kw: object) -> Any:
    return lab.GuestPlan(
        command=command,
        checkout=tmp_path / "checkout",
        venv=tmp_path / "checkout" / ".venv",
        labdir=tmp_path / "lab",
        results=tmp_path / "lab" / "out",
        guest_tmp=tmp_path,
        **kw,
    )


# ---------------------------------------------------------------- kernel choice


def test_pick_kernel_takes_the_newest_amd64_by_version_not_by_text() -> None:
    paths = [
        Path("/boot/vmlinuz-6.1.0-9-amd64"),
        Path("/boot/vmlinuz-6.1.0-56-amd64"),
        Path("/boot/vmlinuz-6.1.0-10-amd64"),
        Path("/boot/vmlinuz-6.12.1-cloud-amd64"),
        Path("/boot/vmlinuz-7.0.0-1-arm64"),
        Path("/boot/vmlinuz-6.1.0-56-amd64.old"),
    ]
    assert lab.pick_kernel(paths) == Path("/boot/vmlinuz-6.12.1-cloud-amd64")
    assert lab.pick_kernel(paths[:3]) == Path("/boot/vmlinuz-6.1.0-56-amd64")


def test_pick_kernel_without_a_debian_kernel_names_the_package() -> None:
    with pytest.raises(lab.LabError, match=r"apt-get install linux-image-amd64"):
        lab.pick_kernel([Path("/boot/vmlinuz-6.1.0-1-arm64"), Path("/boot/config-6.1.0-1-amd64")])


def test_paths_that_virtme_cannot_pass_are_refused() -> None:
    lab.check_path(Path("/work/main"), "the checkout")
    for bad in ("/tmp/a b", "/tmp/a,b", "/tmp/a=b", "/tmp/a'b"):
        with pytest.raises(lab.LabError, match="plain path"):
            lab.check_path(Path(bad), "the checkout")


# ---------------------------------------------------------------- command lines


def test_vng_always_disables_kvm_runs_as_root_and_passes_a_script_file() -> None:
    argv = lab.vng_argv(
        Path("/v/bin/vng"),
        Path("/boot/vmlinuz-6.1.0-56-amd64"),
        checkout=Path("/work/main"),
        rwdirs=[Path("/tmp/ipsecd-lab-x")],
        script=Path("/tmp/ipsecd-lab-x/run.sh"),
        memory="1G",
        cpus=None,
        verbose=False,
    )
    assert "--disable-kvm" in argv
    assert argv[argv.index("--user") + 1] == "root"
    assert argv[argv.index("--rwdir") + 1] == "/tmp/ipsecd-lab-x"
    assert argv[argv.index("--cwd") + 1] == "/work/main"
    # The command itself never rides on the kernel command line, only the script path.
    assert argv[-2:] == ["--exec", "/bin/sh /tmp/ipsecd-lab-x/run.sh"]
    assert "--cpus" not in argv and "--verbose" not in argv


def test_parse_args_keeps_the_command_whole_and_checks_options() -> None:
    args = lab.parse_args(["--timeout", "60", "pytest", "-m", "kernel", "-k", "x or y"])
    assert args.timeout == 60 and args.command == ["pytest", "-m", "kernel", "-k", "x or y"]
    assert lab.parse_args(["--", "--weird"]).command == ["--weird"]
    for bad in ([], ["--timeout", "0", "true"], ["--memory", "lots", "true"]):
        with pytest.raises(SystemExit):
            lab.parse_args(bad)


def test_forwarded_env_passes_ipsecd_and_pytest_variables_only() -> None:
    env = {
        "IPSECD_DEBUG": "1",
        "IPSECD_LAB": "0",
        "PYTEST_ADDOPTS": "-x",
        "HOME": "/home/u",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "PATH": "/bin",
    }
    assert lab.forwarded_env(env) == {"IPSECD_DEBUG": "1", "PYTEST_ADDOPTS": "-x"}


# ---------------------------------------------------------------- the guest script


def test_guest_script_runs_the_command_and_records_its_status(tmp_path: Path) -> None:
    """Run the generated script with /bin/sh on the host, modules switched off."""
    (tmp_path / "checkout").mkdir()
    (tmp_path / "lab" / "out").mkdir(parents=True)
    cmd = ("sh", "-c", 'echo "$IPSECD_LAB|$IPSECD_LAB_OUT|$PYTEST_ADDOPTS|$(pwd)|$1"; exit 7')
    plan = _plan(
        tmp_path,
        (*cmd, "x", "it's $HOME"),
        env=(("IPSECD_X", "a b"),),
        required_modules=(),
        optional_modules=(),
    )
    script = tmp_path / "lab" / "run.sh"
    script.write_text(lab.guest_script(plan))
    proc = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 7, proc.stderr
    flag, out, addopts, cwd, arg = proc.stdout.strip().split("|")
    assert (flag, out, cwd) == ("1", str(tmp_path / "lab" / "out"), str(tmp_path / "checkout"))
    assert arg == "it's $HOME"  # quoting survives the trip through the script
    assert addopts.startswith(f"-o cache_dir={tmp_path}/ipsecd-lab.")
    assert (tmp_path / "lab" / "status").read_text().strip() == "7"
    assert (tmp_path / "lab" / "ready").exists()
    assert not (tmp_path / "lab" / "status.tmp").exists()


def test_guest_script_fails_with_a_message_when_modules_do_not_load(tmp_path: Path) -> None:
    (tmp_path / "checkout").mkdir()
    (tmp_path / "lab").mkdir()
    plan = _plan(tmp_path, ("echo", "must not run"), required_modules=("no_such_module_xyz",))
    script = tmp_path / "lab" / "run.sh"
    script.write_text(lab.guest_script(plan))
    proc = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == lab.EXIT_NO_STATUS
    assert "must not run" not in proc.stdout
    assert "lab: error: cannot load kernel modules (no_such_module_xyz)" in proc.stderr
    assert (tmp_path / "lab" / "status").read_text().strip() == str(lab.EXIT_NO_STATUS)


def test_guest_script_loads_the_esp_and_ah_modules() -> None:
    text = lab.guest_script(
        lab.GuestPlan(
            command=("true",),
            checkout=Path("/c"),
            venv=Path("/c/.venv"),
            labdir=Path("/l"),
            results=Path("/l/out"),
        )
    )
    assert "modprobe -a esp4 esp6 ah4 ah6 xfrm_user veth" in text
    assert "export IPSECD_LAB=1" in text


# ---------------------------------------------------------------- exit status


def _judge(status: str | None, **kw: object) -> Any:
    base: dict[str, object] = {
        "booted": True,
        "timed_out": False,
        "signalled": None,
        "vm_status": 0,
        "timeout": 900.0,
    }
    base.update(kw)
    return lab.judge(status, **base)


@pytest.mark.parametrize(("text", "code"), [("0\n", 0), ("1\n", 1), ("5", 5), ("255\n", 255)])
def test_the_guest_status_is_the_exit_status(text: str, code: int) -> None:
    assert _judge(text) == lab.Verdict(code)


def test_a_failing_guest_command_fails_even_if_vng_says_zero() -> None:
    assert _judge("1\n", vm_status=0).code == 1


def test_no_status_file_is_a_failure_saying_what_happened() -> None:
    crashed = _judge(None, vm_status=0)
    assert crashed.code == lab.EXIT_NO_STATUS
    assert "without reporting its exit status" in crashed.error
    no_boot = _judge(None, booted=False, vm_status=255)
    assert no_boot.code == lab.EXIT_NO_STATUS and "failed to boot" in no_boot.error
    assert "--verbose" in no_boot.error


def test_timeout_without_status_is_124() -> None:
    verdict = _judge(None, timed_out=True, vm_status=None, timeout=30.0)
    assert verdict.code == lab.EXIT_TIMEOUT == 124
    assert "timed out after 30 s" in verdict.error


def test_a_status_written_just_before_the_timeout_still_counts() -> None:
    assert _judge("0\n", timed_out=True) == lab.Verdict(0)


def test_interrupt_wins_over_everything() -> None:
    verdict = _judge("0\n", signalled=signal.SIGTERM)
    assert verdict.code == 128 + signal.SIGTERM and "SIGTERM" in verdict.error


@pytest.mark.parametrize("text", ["", "\n", "abc", "-1", "256", "1.5"])
def test_a_garbled_status_file_is_a_failure(text: str) -> None:
    verdict = _judge(text)
    assert verdict.code == lab.EXIT_NO_STATUS and "not an exit status" in verdict.error


def test_read_status(tmp_path: Path) -> None:
    assert lab.read_status(tmp_path) is None
    (tmp_path / lab.STATUS_FILE).write_text("3\n")
    assert lab.read_status(tmp_path) == "3\n"


# ---------------------------------------------------------------- process handling
# A shell script stands in for vng here; the real VM runs in `make lab-test`.


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_runner_streams_output_through_pipes_and_returns_the_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Like QEMU: write through /proc/self/fd/1 and /fd/2, which a regular file would not survive.
    fake = "echo out > /proc/self/fd/1; echo err > /proc/self/fd/2; : > {d}/ready; exit 3"
    runner = lab.Runner(["/bin/sh", "-c", fake.format(d=tmp_path)], tmp_path, timeout=30)
    assert runner.run() == 3
    out, err = capsys.readouterr()
    assert out == "out\n" and err.startswith("err\n")
    assert runner.booted and not runner.timed_out


def test_runner_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    # The "VM" ignores SIGTERM and leaves a grandchild: both must be gone afterwards.
    fake = f"trap '' TERM; sleep 300 & echo $! > {tmp_path}/pid; wait"
    runner = lab.Runner(["/bin/sh", "-c", fake], tmp_path, timeout=1)
    runner.GRACE = 0.5
    assert runner.run() is None
    assert runner.timed_out and not runner.booted
    grandchild = int((tmp_path / "pid").read_text())
    for _ in range(100):  # bounded: the kill is asynchronous
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild), "a process of the VM's group survived the runner"
    verdict = lab.judge(
        lab.read_status(tmp_path),
        booted=False,
        timed_out=runner.timed_out,
        signalled=None,
        vm_status=None,
        timeout=1,
    )
    assert verdict.code == lab.EXIT_TIMEOUT


def test_main_without_a_command_or_as_a_bad_kernel_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = lab.main(["--kernel", str(tmp_path / "vmlinuz-0-amd64"), "true"])
    assert code == lab.EXIT_SETUP
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_a_forwarded_signal_stops_the_vm_group(tmp_path: Path) -> None:
    fake = f"sleep 300 & echo $! > {tmp_path}/pid; wait"
    runner = lab.Runner(["/bin/sh", "-c", fake], tmp_path, timeout=60)

    def stop_when_started() -> None:  # what the SIGTERM handler does when we are told to stop
        for _ in range(400):  # bounded: 20 s
            if (tmp_path / "pid").exists():
                break
            time.sleep(0.05)
        runner._on_signal(signal.SIGTERM, None)

    stopper = threading.Thread(target=stop_when_started)
    stopper.start()
    vm_status = runner.run()
    stopper.join(timeout=30)
    assert runner.signalled == signal.SIGTERM and not runner.timed_out
    assert vm_status == -signal.SIGTERM
    grandchild = int((tmp_path / "pid").read_text())
    for _ in range(100):
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild)
    verdict = lab.judge(
        None,
        booted=True,
        timed_out=False,
        signalled=runner.signalled,
        vm_status=vm_status,
        timeout=60,
    )
    assert verdict.code == 128 + signal.SIGTERM
