"""The suite's own scheduling (``tests/conftest.py``): every test file that starts process
groups is in ``PROCESS_GROUP_FILES``, so under ``make test``'s two workers no two of them run at
the same time and pick the same free port."""

import re
from pathlib import Path

from tests.conftest import PROCESS_GROUP_FILES

REPO = Path(__file__).resolve().parents[1]
# what a test file uses when it starts a process group, or processes that make one
STARTS_PROCESS_GROUPS = re.compile(
    r'MASTER_PORT|free_port|torchrun_env|init_process_group|dist_train\.sh|slurm_train\.sh'
    r"|launcher='pytorch'|--launcher"
)


def _test_files():
    return sorted((REPO / 'tests').rglob('test_*.py'))


def test_every_file_that_starts_process_groups_is_scheduled_as_one():
    found = {
        f.relative_to(REPO).as_posix()
        for f in _test_files()
        if f.name != Path(__file__).name and STARTS_PROCESS_GROUPS.search(f.read_text())
    }
    # test_readme.py names dist_train.sh only to say which test runs it
    found.discard('tests/journeys/test_readme.py')
    assert found <= PROCESS_GROUP_FILES, (
        f'add to PROCESS_GROUP_FILES: {found - PROCESS_GROUP_FILES}'
    )


def test_the_listed_files_exist():
    assert all((REPO / path).is_file() for path in PROCESS_GROUP_FILES)
