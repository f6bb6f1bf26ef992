"""A TFDS builder for LGG MRI Segmentation: the TIFFs are decoded once, in parallel, into shards.

Every slice goes into one TFDS split (`slices`); train/val/test are cut in tf.data by patient id
(`LGGSource`, below), so a new seed or split file never re-prepares shards. The data is
a manual download: nothing here touches the network.

`prepare()` keys the shards on a fingerprint of the data (file names, sizes, stamps) through a
builder config named after it, so two data folders never share shards and unchanged data is
reused. After `import tfunet.data.lgg_tfds` the builder also loads by name, e.g.

    tfds.load("lgg_mri_segmentation", split="slices", download_and_prepare_kwargs={
        "download_config": tfds.download.DownloadConfig(manual_dir="~/Downloads")})

and any prepared folder loads with `tfds.builder_from_directory(folder)`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import os
import sys
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from tfunet.data.lgg import (IMAGE_SHAPE, SLICE_PATTERN, BadFile, Location, list_slices, locate,
                             read_slice, report_bad)
from tfunet.console import interactive
from tfunet.errors import TfunetError

SPLIT = "slices"
DEFAULT_CACHE = "~/tensorflow_datasets"


class _QuietTfds(logging.Filter):
    """Drops two harmless warnings TFDS 4.9 logs for this builder on every run: its config
    (named after the data) is "custom", and TFDS's own bytes-tensor decoder reads a field it
    deprecated."""

    MESSAGES = ("Using custom data configuration", "`FeatureConnector.dtype` is deprecated")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.MESSAGES)


logging.getLogger("absl").addFilter(_QuietTfds())


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def ordered_parallel(fn, items, workers: int):
    """`map(fn, items)` on a thread pool, in order, with a bounded number of results in flight
    (decoded slices are 256 KiB each; the whole dataset would not fit in memory)."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class LggMriSegmentation(tfds.core.GeneratorBasedBuilder):
    """LGG MRI Segmentation (Buda et al. 2019): 2-D FLAIR-abnormality masks of TCGA-LGG MRI."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Slices of the kaggle_3m layout, one split, mask in {0, 1}."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download the archive of https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation
    (e.g. `kaggle datasets download mateuszbuda/lgg-mri-segmentation`) and put the zip, or the
    `kaggle_3m` folder unpacked from it, in the manual folder (or pass the zip or the folder as
    `manual_dir`). The zip is read in place; its nested duplicate copy is ignored.
    """

    def __init__(self, *, source: Location | None = None, skip_bad: bool = False, **kwargs):
        """source: where the data is (default: found in the download config's manual_dir);
        skip_bad: leave out bad files (listed in `info.metadata["skipped"]`) instead of failing."""
        self._source = source
        self._skip_bad = skip_bad
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        tensor = tfds.features.Tensor
        return self.dataset_info_from_configs(
            description=self.__doc__,
            features=tfds.features.FeaturesDict({
                # Raw bytes: no PNG coding cost when preparing or reading, no int64 upcast.
                "image": tensor(shape=IMAGE_SHAPE, dtype=np.uint8, encoding="bytes"),
                "mask": tensor(shape=IMAGE_SHAPE[:2] + (1,), dtype=np.uint8, encoding="bytes"),
                "patient_id": tfds.features.Text(),
                "slice": tfds.features.Scalar(dtype=np.int32),
            }),
            homepage="https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation",
            citation=CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        source = self._source or locate(dl_manager.manual_dir)
        slices, bad = list_slices(source)
        if not slices:
            raise TfunetError(f"no LGG slices ({SLICE_PATTERN}) in {source}")
        if bad and not self._skip_bad:
            report_bad([(b.path, b.reason) for b in bad], skip_bad=False)
        return {SPLIT: self._generate_examples(source, slices, bad)}

    def _generate_examples(self, source: Location, slices, bad: list[BadFile]):
        reader = source.reader()

        def decode(files):
            try:
                return read_slice(reader, files)
            except BadFile as exc:
                if not self._skip_bad:
                    raise
                return exc

        patients: dict[str, int] = {}
        try:
            for files, result in zip(slices, ordered_parallel(decode, slices, _workers())):
                if isinstance(result, BadFile):
                    bad.append(result)
                    continue
                image, mask = result
                patients[files.patient_id] = patients.get(files.patient_id, 0) + 1
                yield f"{files.patient_id}_{files.slice}", {
                    "image": image, "mask": mask, "patient_id": files.patient_id,
                    "slice": files.slice}
        finally:
            reader.close()
        if not patients:  # TFDS cannot write an empty split
            raise TfunetError(f"every LGG slice in {source} is bad, e.g. {bad[0]}")
        # Written with dataset_info.json once the shards are complete.
        self.info.metadata.update(
            source=str(source), patients=patients,
            skipped=[[b.path, b.reason] for b in sorted(bad, key=lambda b: b.path)])


CITATION = """\
@article{buda2019association,
  title={Association of genomic subtypes of lower-grade gliomas with shape features
         automatically extracted by a deep learning algorithm},
  author={Buda, Mateusz and Saha, Ashirbani and Mazurowski, Maciej A.},
  journal={Computers in Biology and Medicine},
  volume={109},
  pages={218--225},
  year={2019},
  doi={10.1016/j.compbiomed.2019.05.002}
}"""


def prepare(source: Location, cache_dir: str | Path | None = None,
            skip_bad: bool = False) -> LggMriSegmentation:
    """The builder for `source`, its shards prepared under `cache_dir` unless already there."""
    config = tfds.core.BuilderConfig(name=f"data_{source.fingerprint()}",
                                     description=f"prepared from {source}")
    builder = LggMriSegmentation(source=source, skip_bad=skip_bad, config=config,
                                 data_dir=os.path.expanduser(str(cache_dir or DEFAULT_CACHE)))
    if not interactive():  # TFDS's bars would fill a log file with redraws
        tfds.disable_progress_bar()
    # TFDS prints "Downloading and preparing ..." (it only reads the local folder) to stdout,
    # where commands and benchmarks print their JSON: send it to stderr.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                try_download_gcs=False, manual_dir=str(source.path)))
    except BadFile as exc:
        report_bad([(exc.path, exc.reason)], skip_bad=False)
    return builder


class LGGSource:
    """LGG slices as a slice source (see `tfunet.data.sources`), read from prepared TFDS shards.

    Shards hold every slice in one split; patients are picked in tf.data by `patient_id`, so a
    new seed or split file reuses the same shards.
    """

    def __init__(self, data_dir: str | Path, cache_dir: str | Path | None = None,
                 skip_bad: bool = False):
        self.builder = prepare(locate(data_dir), cache_dir, skip_bad)
        metadata = self.builder.info.metadata
        report_bad([tuple(b) for b in metadata["skipped"]], skip_bad)
        self._patients = {str(k): int(v) for k, v in metadata["patients"].items()}

    @classmethod
    def from_config(cls, config) -> "LGGSource":
        if not config.data_dir:
            raise TfunetError("--data-dir is required for dataset 'lgg'")
        return cls(config.data_dir, config.cache_dir, config.skip_bad)

    def patients(self) -> dict[str, int]:
        return dict(self._patients)

    def dataset(self, patient_ids):
        import tensorflow as tf

        ds = self.builder.as_dataset(split=SPLIT, shuffle_files=False)
        keys = sorted(set(patient_ids))
        if not keys:
            return ds.take(0)
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.ones(len(keys), tf.int32)),
            default_value=0)
        count = sum(self._patients.get(p, 0) for p in keys)
        # A known length lets Keras size epochs and progress bars.
        return ds.filter(lambda e: table.lookup(e["patient_id"]) > 0).apply(
            tf.data.experimental.assert_cardinality(count))
