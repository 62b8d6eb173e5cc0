"""tide.runtime with device="cuda": what runs without a GPU. A cuda artifact (written with
tide.compiler.artifact, DEVICE_CODE with fake cubins) is checked against the CUDA driver found at
load time: a missing driver, a driver without devices, a bad ordinal and a device that can run none
of the images are clear errors; otherwise the image the device would run is named (this runtime has
no cuda launch path yet, so the load then ends with code 4, unimplemented). The driver is the
recording stand-in runtime/tests/cuda_standin.c, configured through its environment variables."""

from __future__ import annotations

import os
import subprocess

import pytest

import tide.runtime as R
from tide.compiler import artifact as A
from tide_test_models import REPO, compile_test_kernels, host_arch, standard_plan, write_standard

STANDIN = os.path.join(REPO, "build", "runtime-tests", "libcuda_standin.so")


@pytest.fixture(scope="module")
def standin():
    proc = subprocess.run(["make", "-C", os.path.join(REPO, "runtime"), STANDIN], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return STANDIN


@pytest.fixture(scope="module")
def cuda_artifact(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cuda")
    kernels = compile_test_kernels(str(tmp))
    code = A.DeviceCode(
        images=[A.DeviceImage("sm_80", "cubin", b"fake cubin for sm_80"),
                A.DeviceImage("sm_90", "cubin", b"fake cubin for sm_90")],
        functions=[A.DeviceFunction("vadd_kernel", ["handle", "handle", "int32"], ["blockIdx.x", "threadIdx.x"])])
    path = str(tmp / "cuda.tide")
    write_standard(path, kernels, target=A.TargetInfo("cuda", host_arch(), 0, "sm_80,sm_90"), plan=standard_plan(),
                   device_code=A.encode_device_code(code), check=False)
    return path


@pytest.fixture
def driver_env(monkeypatch, tmp_path):
    log = tmp_path / "standin.log"
    monkeypatch.setenv("TIDE_STANDIN_LOG", str(log))
    for name in ("TIDE_STANDIN_CC", "TIDE_STANDIN_DEVICES", "TIDE_STANDIN_INIT_RC"):
        monkeypatch.delenv(name, raising=False)
    return log


def test_cuda_artifact_on_the_cpu_is_refused(cuda_artifact):
    with pytest.raises(R.TideError, match=r"targets cuda \(device 'sm_80,sm_90'\); it cannot run on the cpu") as err:
        R.load(cuda_artifact)
    assert err.value.code == 4


def test_no_driver(cuda_artifact):
    with pytest.raises(R.TideError, match=r"/nonexistent/libcuda\.so\.1 not found: ") as err:
        R.load(cuda_artifact, device="cuda", cuda_driver="/nonexistent/libcuda.so.1")
    assert err.value.code == 7


@pytest.mark.parametrize("cc, devices, device, code, message", [
    ("90", "1", "cuda", 4, r"cuda:0 \(compute capability 9\.0\) would run the sm_90 image"),
    ("86", "2", "cuda:1", 4, r"cuda:1 \(compute capability 8\.6\) would run the sm_80 image"),
    ("75", "1", "cuda:0", 4, r"device code for sm_80 \(cubin\), sm_90 \(cubin\); this device is sm_75"),
    ("90", "0", "cuda", 7, r"no CUDA device: the driver reports 0 devices"),
    ("90", "1", "cuda:3", 7, r"CUDA device 3 does not exist \(the driver reports 1 device\)"),
])
def test_device_discovery_with_the_standin(cuda_artifact, standin, driver_env, monkeypatch, cc, devices, device,
                                           code, message):
    monkeypatch.setenv("TIDE_STANDIN_CC", cc)
    monkeypatch.setenv("TIDE_STANDIN_DEVICES", devices)
    with pytest.raises(R.TideError, match=message) as err:
        R.load(cuda_artifact, device=device, cuda_driver=standin)
    assert err.value.code == code
    calls = driver_env.read_text().splitlines()
    assert calls[:2] == ["cuInit 0", f"cuDeviceGetCount -> {devices}"]


def test_cpu_artifact_on_cuda_and_bad_device_strings(tmp_path, standin):
    path = write_standard(str(tmp_path / "cpu.tide"), compile_test_kernels(str(tmp_path)))
    with pytest.raises(R.TideError, match=r"the artifact targets cpu; it cannot be loaded onto cuda:0"):
        R.load(path, device="cuda:0", cuda_driver=standin)
    for bad in ("gpu", "cuda:", "cuda:-1", "cpu:1", 3):
        with pytest.raises(R.TideError, match="device must be 'cpu', 'cuda' or 'cuda:<ordinal>'"):
            R.load(path, device=bad)
    assert R.load(path, device="cpu").target == "cpu"
