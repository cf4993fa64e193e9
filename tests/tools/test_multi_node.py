"""Beyond one machine, as docs/distributed.md says to run it, from a folder outside the checkout:
``tools/slurm_train.sh`` (2 tasks on 2 "nodes", under local ``srun``/``scontrol`` stand-ins, so
mmengine's ``slurm`` launcher reads real Slurm variables) trains the digits DeiT; two
``tools/dist_train.sh CONFIG 1`` launches with ``NNODES=2`` (each machine its own folder) resume
it from the middle of an epoch and end with its weights bit for bit; ``tools/slurm_test.sh``
tests it. Gloo on CPUs; the shared steps of tools/analysis/multi_node_journeys.py."""

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch

from mmdeit.engine import safe_load
from tools.analysis.dist_exit_loop import ABORT, EPOCHS, REPO, digits_config
from tools.analysis.multi_node_journeys import (
    NO_SHARED_FOLDER,
    RESUME_FROM,
    final_weights,
    node_variables,
    slurm,
    slurm_variables,
    two_nodes,
    wait,
)

pytestmark = [
    pytest.mark.journey,
    pytest.mark.skipif(torch.cuda.is_available(), reason='gloo on CPUs'),
]
ITERS, TRAIN = 3, 48  # per epoch: 48 images, 2 ranks x batch 8
LR_SCALED = 'current batch size is 16. Scaling the original LR by 0.25'  # 2 x 8 / 64

# Each rank writes its world, its torch.distributed variables and the samples of each iteration.
PROBE = textwrap.dedent(
    """
    import json
    import os
    import os.path as osp

    from mmengine.hooks import Hook

    from mmdeit.registry import HOOKS

    VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'SLURM_PROCID')


    @HOOKS.register_module(force=True)
    class RankProbeHook(Hook):
        def before_train(self, runner):
            self.samples = []

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            ids = [s.sample_idx for s in data_batch['data_samples']]
            self.samples.append([runner.epoch, runner.iter, ids])

        def after_train(self, runner):
            info = dict(world_size=runner.world_size, rank=runner.rank, samples=self.samples,
                        env={k: os.environ.get(k) for k in VARS})
            with open(osp.join(runner.work_dir, f'probe_rank{runner.rank}.json'), 'w') as f:
                json.dump(info, f)
    """
)


def _probe(work_dir: Path, rank: int) -> dict:
    return json.loads((work_dir / f'probe_rank{rank}.json').read_text())


def _out(folder: Path, name: str) -> str:
    text = (folder / f'{name}.out').read_text()
    assert ABORT not in text, text[-3000:]  # no rank aborted at exit
    return text


def _disjoint_halves(probes: list, iters: range) -> None:
    """Every iteration: the ranks' batches are different samples; every epoch: all of them."""
    seen = [{(e, i): ids for e, i, ids in p['samples']} for p in probes]
    assert sorted(seen[0]) == sorted(seen[1]) == [(i // ITERS, i) for i in iters]
    for key in seen[0]:
        assert len(seen[0][key]) == len(seen[1][key]) == 8
        assert not set(seen[0][key]) & set(seen[1][key]), key
    for epoch in {e for e, _ in seen[0]}:
        if all((epoch, i) in seen[0] for i in range(epoch * ITERS, (epoch + 1) * ITERS)):
            ids = [x for s in seen for (e, _), v in s.items() if e == epoch for x in v]
            assert sorted(ids) == list(range(TRAIN)), epoch


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> dict:
    """Slurm training, then at once the 2-node resume and the Slurm test, as the doc says."""
    folder = tmp_path_factory.mktemp('user')
    assert REPO not in folder.parents
    (folder / 'rank_probe.py').write_text(PROBE)
    config = digits_config(
        folder,
        batch_size=8,
        randomness='dict(seed=0, diff_rank_seed=True)',
        custom_imports="dict(imports=['rank_probe'], allow_failed_imports=False)",
        custom_hooks="custom_hooks + [dict(type='RankProbeHook')]",
        **NO_SHARED_FOLDER,
    )
    user = dict(PYTHONPATH=str(folder))  # where the user's probe module is
    train = slurm_variables(folder, CONFIG=config, WORK_DIR='slurm', **user)
    status = wait(slurm(folder, 'slurm_train.sh', 'slurm_train.out', train))
    assert status == [0], _out(folder, 'slurm_train')[-5000:]
    nodes = [folder / 'node0', folder / 'node1']
    resume = node_variables(CONFIG=config, CHECKPOINT=str(folder / 'slurm' / RESUME_FROM), **user)
    checkpoint = str(folder / 'slurm' / f'epoch_{EPOCHS}.pth')
    test = slurm_variables(folder, CONFIG=config, CHECKPOINT=checkpoint, **user)
    procs = two_nodes(nodes, 'two_nodes.out', resume, resume=True)
    procs += slurm(folder, 'slurm_test.sh', 'slurm_test.out', test)
    return dict(
        folder=folder,
        nodes=nodes,
        port=train['MASTER_PORT'],
        work_dir=Path(config).stem,
        statuses=wait(procs),
    )


def test_slurm_train_runs_the_slurm_launcher_with_two_tasks(runs):
    folder = runs['folder']
    output = _out(folder, 'slurm_train')
    call = json.loads((folder / 'srun_calls.jsonl').read_text().splitlines()[0])
    assert call['options'] == {
        'partition': 'debug',
        'job-name': 'deit-digits',
        'gres': 'gpu:1',
        'ntasks': '2',
        'ntasks-per-node': '1',
        'cpus-per-task': '1',
        'kill-on-bad-exit': '1',
    }
    assert call['command'][-2:] == ['--launcher=slurm', '--auto-scale-lr']
    assert call['command'][2] == str(REPO / 'tools' / 'train.py')
    assert 'Distributed launcher: slurm' in output and LR_SCALED in output
    probes = [_probe(folder / 'slurm', rank) for rank in (0, 1)]
    for rank, probe in enumerate(probes):
        assert probe['world_size'] == 2 and probe['rank'] == rank
        # MASTER_ADDR: the first host of SLURM_NODELIST=127.0.0.[1-2], from scontrol.
        assert probe['env'] == dict(
            RANK=str(rank), WORLD_SIZE='2', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
            MASTER_PORT=runs['port'], SLURM_PROCID=str(rank),
        )  # fmt: skip
    _disjoint_halves(probes, range(EPOCHS * ITERS))
    # Every checkpoint (iteration, epoch end, best after validation) holds both ranks' states.
    (best,) = (folder / 'slurm').glob('best_*.pth')
    for path in (folder / 'slurm' / RESUME_FROM, folder / 'slurm' / 'epoch_1.pth', best):
        ranks = safe_load(str(path))['rng_state']['ranks']
        assert len(ranks) == 2, path.name
        assert not torch.equal(ranks[0]['current']['torch'], ranks[1]['current']['torch'])


def test_two_nodes_resume_mid_epoch_exactly(runs):
    nodes, folder = runs['nodes'], runs['folder']
    assert runs['statuses'][:2] == [0, 0], _out(nodes[0], 'two_nodes')[-5000:]
    output = _out(nodes[0], 'two_nodes')
    _out(nodes[1], 'two_nodes')
    assert (
        'reading its first 1 of 3 batches again' in output and 'holds no random state' not in output
    )
    assert LR_SCALED in output
    work_dirs = [node / 'work_dirs' / runs['work_dir'] for node in nodes]
    probes = [_probe(work_dirs[rank], rank) for rank in (0, 1)]
    assert [p['world_size'] for p in probes] == [2, 2]
    _disjoint_halves(probes, range(4, EPOCHS * ITERS))
    assert (work_dirs[0] / f'epoch_{EPOCHS}.pth').is_file()
    assert not list(work_dirs[1].rglob('*.pth'))  # only rank 0 writes checkpoints
    resumed, uninterrupted = final_weights(work_dirs[0]), final_weights(folder / 'slurm')
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    # The machines share no folder: the doc's evaluator setting for that is the test's.
    doc = (REPO / 'docs' / 'distributed.md').read_text()
    assert all(f'{key} = {value}\n' in doc for key, value in NO_SHARED_FOLDER.items())


def test_slurm_test_evaluates_the_checkpoint_over_two_tasks(runs):
    folder = runs['folder']
    assert runs['statuses'][2] == 0, _out(folder, 'slurm_test')[-5000:]
    output = _out(folder, 'slurm_test')
    calls = [json.loads(line) for line in (folder / 'srun_calls.jsonl').read_text().splitlines()]
    assert calls[-1]['command'][2] == str(REPO / 'tools' / 'test.py')
    assert calls[-1]['options']['ntasks'] == '2'
    assert 'Distributed launcher: slurm' in output
    # The metric over both tasks' halves of the 40 images: the training's last validation.
    metrics = r' +(accuracy/top1: .*?) +data_time'
    trained = re.findall(rf'Epoch\(val\) \[{EPOCHS}\]\[1/1\]{metrics}', _out(folder, 'slurm_train'))
    tested = re.findall(rf'Epoch\(test\) \[1/1\]{metrics}', output)
    assert trained and tested == trained[-1:]
