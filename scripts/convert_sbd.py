"""Convert SBD (Hariharan et al.) + PASCAL VOC 2012 into the standard "trainaug" set.

    python scripts/convert_sbd.py /data/benchmark_RELEASE /data/VOCdevkit /data/voc_aug
    python train.py dataset=voc_aug dataset.root=/data/voc_aug

SBD: benchmark_RELEASE/ of benchmark.tgz (dataset/cls/*.mat, dataset/{train,val}.txt); VOC:
the VOCdevkit folder of VOCtrainval_11-May-2012.tar. Writes OUT/SegmentationClassAug/*.png,
OUT/ImageSets/Segmentation/{trainaug,val}.txt and the link OUT/JPEGImages to VOC's images;
nothing is written into the two inputs (segkit.data.voc_aug). Needs scipy (segkit[sbd]).
Exit code 0, or 3 with one message when an input is not what it should be.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from segkit.data.voc_aug import convert_sbd
from segkit.errors import DataError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("sbd", type=Path, help="SBD benchmark_RELEASE folder")
    p.add_argument("voc", type=Path, help="VOCdevkit folder (holds VOC2012/)")
    p.add_argument("out", type=Path, help="new output folder (dataset.root of dataset=voc_aug)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        counts = convert_sbd(args.sbd, args.voc, args.out)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return DataError.exit_code
    print(f"wrote {args.out}: {counts['trainaug']} trainaug, {counts['val']} val samples")
    print(f"check: python scripts/check_dataset.py dataset=voc_aug dataset.root={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
