"""``python -m mmdeit TOOL [ARGS]``: the tools that ship inside the package, from any folder.

The tools are the repository's ``tools/`` scripts, carried in the package under ``.mim/tools``
(the mim layout), so an installed mmdeit (a wheel, no checkout) runs them as the checkout does::

    python -m mmdeit train my_config.py --work-dir work_dirs/mine
    python -m mmdeit test my_config.py work_dirs/mine/epoch_1.pth
    python -m mmdeit infer cat.jpg my_config.py work_dirs/mine/epoch_1.pth
    python -m mmdeit export my_config.py work_dirs/mine/epoch_1.pth model.onnx
"""

import os.path as osp
import runpy
import sys
from typing import List, Optional

TOOLS_DIR = osp.join(osp.dirname(osp.abspath(__file__)), '.mim', 'tools')
TOOLS = {
    'train': 'train.py',
    'test': 'test.py',
    'infer': 'infer.py',
    'convert': osp.join('model_converters', 'deit_to_mmdeit.py'),
    'vis_attention': osp.join('visualization', 'vis_attention.py'),
    'digits_to_folder': osp.join('dataset_converters', 'digits_to_folder.py'),
    'export': osp.join('deployment', 'export_onnx.py'),
}
USAGE = f'usage: python -m mmdeit {{{",".join(TOOLS)}}} [ARGS ...] (-h after TOOL for its help)'


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ('-h', '--help'):
        print(USAGE)
        return
    name = argv[0]
    if name not in TOOLS:
        sys.exit(f'mmdeit: unknown tool {name!r}\n{USAGE}')
    path = osp.join(TOOLS_DIR, TOOLS[name])
    if not osp.isfile(path):
        sys.exit(f'mmdeit: the tools are missing from this install ({path} does not exist)')
    sys.argv = [path, *argv[1:]]
    from mmdeit.engine import freeze_startup_objects  # imported with the package already

    freeze_startup_objects()  # every tool, those that import mmdeit only in their main too
    runpy.run_path(path, run_name='__main__')


if __name__ == '__main__':
    main()
