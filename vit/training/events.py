"""A training run's TensorBoard event file, written without importing TensorFlow.

clu's metric writers write through `tf.summary`, and tensorboard's own `EventFileWriter` opens its
file through `tensorboard.compat.tf`, which imports TensorFlow whenever it is installed (it is:
tensorflow-datasets needs it): about 4 CPU-seconds in every trainer process, for a few records.
Here the records are tensorboard's own (its `RecordWriter`, the TFRecord framing with CRCs; its
`Event`/`Summary` protos; its plugins' summary metadata) and only the file is opened with Python.

What is written is what `tf.summary` writes (tests/test_tensorboard.py compares the two): one
event per value, scalars as float32 tensors of the 'scalars' plugin, images as the 'images'
plugin's string tensors [width, height, PNG...], under the tags given, at the steps given.
"""
from __future__ import annotations

import io
import itertools
import os
import socket
import time
from typing import Any, Mapping, Optional

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

_WRITERS = itertools.count()  # Numbers a process's event files, as tf.summary does.


class EventWriter:
  """Appends scalars and images to a new event file in `logdir` (none when `logdir` is None: a
  process other than the first writes nothing, as clu's `just_logging`).

  Writes are synchronous and each `write_*` call ends with a flush: TensorBoard sees every logged
  step at once, and a failed write (a full disk, no permission) raises its OSError from the call
  that logged the step, where `vit.checkpoints.stop_on_failed_write` names it. After a failure the
  file is closed with what it holds (its records up to the failed one stay readable) and every
  later call raises the same OSError.

  `first_step`: the first step this writer will log (1 for a fresh run, a checkpoint's step + 1
  for a resumed one). The file then starts with a `SessionLog(status=START)` event at that step,
  TensorBoard's mark of a session: the server's reader (plugin_event_accumulator, with
  purge_orphaned_data=True by default, as vit.inspect.runs reads) takes every START after a
  run's first for a restart and drops what earlier files logged at its step or later. So the
  steps a killed run logged past its last checkpoint, logged again after the resume, count once,
  with the resumed run's values. (A fresh run writes one too: the first START is not a restart.)
  """

  def __init__(self, logdir: Optional[str], first_step: Optional[int] = None):
    self.path: Optional[str] = None  # The event file's.
    self._records: Optional[RecordWriter] = None
    self._failure: Optional[OSError] = None
    if logdir is None:
      return
    os.makedirs(logdir, exist_ok=True)
    # tf.summary's name (what `events.out.tfevents.*` globs find): the host, the pid and the
    # writer's number keep apart the files of runs started in the same second.
    name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
            f'{os.getpid()}.{next(_WRITERS)}.v2')
    self.path = os.path.join(logdir, name)
    self._records = RecordWriter(open(self.path, 'xb'))
    # Buffered, not flushed: the file exists at once, and a failure to write its first record
    # (a full disk) is raised by the first write_* or flush, where it is reported in one line.
    self._records.write(event_pb2.Event(
        wall_time=time.time(), file_version='brain.Event:2',
        source_metadata=event_pb2.SourceMetadata(writer=__name__)).SerializeToString())
    if first_step is not None:
      self._records.write(event_pb2.Event(
          wall_time=time.time(), step=int(first_step),
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)
      ).SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """{tag: a number or 0-d array} at `step`, each stored as float32 (as tf.summary.scalar).
    ValueError for a value that is not one number."""
    self._write([_event(step, scalar_summary.scalar_pb(tag, value))
                 for tag, value in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """{tag: uint8 [N, H, W, C] or [H, W, C] with C in 1, 3, 4} at `step`, all N images of a tag
    as PNGs in one summary (as clu's tf.summary.image with max_outputs=N). TypeError for
    another dtype, ValueError for another shape, naming the tag."""
    self._write([_event(step, _image_summary(tag, np.asarray(value)))
                 for tag, value in images.items()])

  def flush(self) -> None:
    """Writes the file's first record if no call has yet (after a call nothing is left
    buffered); raises the OSError of a failed write, if any."""
    self._write([])

  def close(self) -> None:
    """Flushes and closes the file (a second close does nothing); raises the OSError of a failed
    write, if any."""
    if self._records is not None and not self._records.closed:
      self.flush()
      self._records.close()
    if self._failure is not None:
      raise self._failure

  def _write(self, events: list[event_pb2.Event]) -> None:
    if self._failure is not None:
      raise self._failure
    if self._records is None:
      return
    try:
      for event in events:
        self._records.write(event.SerializeToString())
      self._records.flush()
    except OSError as e:
      self._failure = e
      # Closed now (its flush fails again, and it still closes): no later call adds to the file
      # after the partial record, and no flush fails again when it is collected at exit (said
      # on stderr, 'Exception ignored', under `python -X dev`).
      try:
        self._records.close()
      except OSError:
        pass
      raise


def _event(step: int, summary: summary_pb2.Summary) -> event_pb2.Event:
  return event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)


def _image_summary(tag: str, images: np.ndarray) -> summary_pb2.Summary:
  """The 'images' plugin's summary: a string tensor [width, height, PNG of each image]."""
  if images.dtype != np.uint8:
    raise TypeError(f'image {tag!r}: dtype {images.dtype}, expected uint8')
  if images.ndim == 3:
    images = images[None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
    raise ValueError(f'image {tag!r}: shape {images.shape}, expected [N, H, W, C] or '
                     '[H, W, C] with C in 1, 3, 4')
  pngs = []
  for image in images:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, 'PNG')
    pngs.append(buffer.getvalue())
  height, width = images.shape[1:3]
  tensor = tensor_util.make_tensor_proto(
      np.array([str(width).encode(), str(height).encode(), *pngs], dtype=object))
  summary = summary_pb2.Summary()
  summary.value.add(tag=tag, tensor=tensor,
                    metadata=image_metadata.create_summary_metadata(None, None))
  return summary
