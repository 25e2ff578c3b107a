#!/usr/bin/env bash
# Downloads the wheels an offline GPU box needs to run runner and bench/harness.py (Python 3.12,
# manylinux x86_64; the box has torch, transformers, peft, accelerate and no package registry), into
# a folder that travels with the working tree:
#
#   scripts/gather_wheels.sh [--dest DIR] [NAME ...]
#
# NAME: any of trl datasets bitsandbytes jsonschema wandb optuna deepspeed liger-kernel runner, or starlette
# uvicorn (runner serve) and torchao (training.precision fp8, full fine-tune) (default: all but these three).
# Versions are pinned to this machine's .venv where it has the package, so the GPU box runs what the
# tests ran. Requirements the box's image lacks are fetched too (its package list: KINDS.md of the
# device tool, 2026-11-17). deepspeed has no wheel on PyPI: `pip wheel --no-deps deepspeed` builds a
# pure-Python one (ops are compiled just-in-time on the GPU box). runner is built from this checkout.
# Prints the total size and warns above 64 MiB (what one device call carries). On the box:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
NAMES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) DEST="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) NAMES+=("$1"); shift ;;
  esac
done
[ ${#NAMES[@]} -gt 0 ] || NAMES=(trl datasets bitsandbytes jsonschema wandb optuna deepspeed liger-kernel runner)
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
mkdir -p "$DEST"
if [ "$DEST" = .whl ] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null && ! git check-ignore -q .whl; then
  echo "/.whl/" >> .git/info/exclude
fi

exec "$PY" - "$DEST" "${NAMES[@]}" <<'PYTHON'
import glob, os, re, subprocess, sys, zipfile
from importlib.metadata import PackageNotFoundError, version
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon
from packaging.version import Version

dest, wanted = sys.argv[1], sys.argv[2:]
KNOWN = {"trl", "datasets", "bitsandbytes", "jsonschema", "wandb", "optuna", "deepspeed", "liger-kernel", "runner",
         "starlette", "uvicorn", "torchao"}
unknown = [n for n in wanted if n not in KNOWN]
if unknown:
    sys.exit(f"unknown package(s) {unknown}: choose from {sorted(KNOWN)}")
# The exact flags of the device notes; more manylinux_2_N tags only when a package has none of these.
BASE = ["--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
        "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
        "--platform", "manylinux1_x86_64"]
MORE = [x for n in (24, 31, 34, 35, *range(5, 40)) for x in ("--platform", f"manylinux_2_{n}_x86_64")]
# On the GPU image already (2026-11-17), with the versions seen there where known.
IMAGE = set(canon(n) for n in """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub
humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx
onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split())
IMAGE_VERSIONS = {"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
                  "tokenizers": "0.23.2", "torch": "2.11.0", "transformers": "5.17.0", "triton": "3.6.0"}
MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "os_name": "posix",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "extra": ""}


def pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def wheels():
    """canonical name -> (version, path) of the wheels in dest."""
    out = {}
    for path in glob.glob(os.path.join(dest, "*.whl")):
        name, ver = os.path.basename(path).split("-")[:2]
        out.setdefault(canon(name), []).append((ver, path))
    return out


def local_version(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def fetch(req: Requirement):
    pinned = local_version(req.name)
    spec = f"=={pinned}" if pinned and req.specifier.contains(pinned, prereleases=True) else str(req.specifier)
    target = f"{req.name}{spec}"
    if canon(req.name) == "deepspeed":
        result = pip("wheel", "-q", "--no-deps", "-w", dest, target)
    else:
        result = pip("download", "-q", *BASE, "-d", dest, target)
        if result.returncode:
            result = pip("download", "-q", *BASE, *MORE, "-d", dest, target)
    if result.returncode:
        sys.exit(f"could not fetch {target}:\n{result.stderr[-2000:]}")
    print(f"  {target}")


def requirements(path):
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    for line in lines:
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(MARKERS):
                yield req


print(f"wheels for Python 3.12 manylinux x86_64 into {dest}/:")
if "runner" in wanted:
    for old in glob.glob(os.path.join(dest, "runner-*.whl")):
        os.remove(old)
    result = pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dest, ".")
    if result.returncode:
        sys.exit(f"could not build runner:\n{result.stderr[-2000:]}")
    print("  runner (this checkout)")
queue = [Requirement(n) for n in wanted if n != "runner"]
seen, warnings = set(), []
while True:
    for req in queue:
        if canon(req.name) not in wheels() and canon(req.name) not in seen:
            seen.add(canon(req.name))
            fetch(req)
    queue = []
    have = wheels()
    for name, found in have.items():
        if len(found) > 1:
            warnings.append(f"{name}: several versions in {dest} ({', '.join(v for v, _ in found)}): keep one")
        for req in requirements(found[0][1]):
            n = canon(req.name)
            if n in have:
                if not req.specifier.contains(have[n][0][0], prereleases=True):
                    warnings.append(f"{name} wants {req}, {dest} has {have[n][0][0]}")
            elif n in IMAGE:
                seen_ver = IMAGE_VERSIONS.get(n)
                if seen_ver and not req.specifier.contains(seen_ver, prereleases=True):
                    warnings.append(f"{name} wants {req}; the GPU image has {n} {seen_ver}")
            elif n not in seen:
                queue.append(req)
    if not queue:
        break

have = wheels()
total = 0
print(f"\n{'size MiB':>9}  wheel")
for name in sorted(have):
    for ver, path in have[name]:
        size = os.path.getsize(path)
        total += size
        print(f"{size / 2**20:9.2f}  {os.path.basename(path)}")
print(f"{total / 2**20:9.2f}  total ({len(glob.glob(os.path.join(dest, '*.whl')))} wheels)")
for w in dict.fromkeys(warnings):
    print(f"warning: {w}")
if total > 64 * 2**20:
    print(f"warning: {total / 2**20:.1f} MiB is over the 64 MiB a device call carries (with the working tree): "
          f"gather fewer at a time, e.g. `scripts/gather_wheels.sh --dest .whl trl datasets jsonschema runner`; "
          f"bitsandbytes and wandb are the large ones")
PYTHON
