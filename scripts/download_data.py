#!/usr/bin/env python
"""Download, verify and convert zoo's datasets on a machine with internet.

    python scripts/download_data.py mnist --data-dir DIR
    python scripts/download_data.py cifar10 imagenet32 --data-dir DIR
    python scripts/download_data.py all --data-dir DIR
    python scripts/download_data.py imagenet32 --data-dir DIR --verify-only   # tars copied in by hand

Files go to DIR/<name>/ (DIR defaults to $ZOO_DATA_DIR, then ~/.cache/zoo/data),
where `zoo.load_dataset` looks. Every file is checked against its published
sha256/md5 (sources in zoo/data/download.py); ImageNet32 is converted once to
memory-mappable .npy splits. Imagenet32 from Chrabaszcz et al. needs a login at
image-net.org: put its zips in DIR/imagenet32_chrabaszcz/ and this script
verifies, extracts and converts them. Check the result with
`python -m zoo.data check NAME --data-dir DIR`.
"""

import sys

from zoo.data.download import main

if __name__ == "__main__":
    sys.exit(main())
