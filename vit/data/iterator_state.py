"""The training iterator's checkpoint state, and its re-derivation for another input layout.

A layout is (processes, grain workers per process). grain's own state restores only into the
layout that saved it: with W workers it holds one position per worker (grain's
`InterleaveIterDataset` over `slice(i, None, W)`), without workers one `next_index`, and each
process saves its own. What every layout shares is how many records of its shuffled, repeated
shard a process has read; that count is the position carried to a new layout:

- another worker count, same processes: each process keeps its own count. Every random choice
  is seeded by (seed, record position) and batches are formed after the workers, so the batches
  are the same bits as the saved layout's.
- another process count: the run keeps its progress in epochs (records read by all processes
  over the records of all shards), rounded to a record of the new, differently sized shard. The
  shuffled order within each shard is another one, so the exact samples differ from here on.
"""
from __future__ import annotations

from typing import Optional, Sequence

import grain

from vit.errors import UserError, counted


def records_read(grain_state: dict) -> int:
  """Records of this process's shard stream read so far (bad ones included), from the state of
  `MapDataset.to_iter_dataset` (`next_index`) or of `mp_prefetch` (one `next_index` per worker,
  each counting within its worker's slice). Raises ValueError on any other layout."""
  if 'next_index' in grain_state:
    return int(grain_state['next_index'])
  workers = grain_state.get('iterators_in_use_states')
  if workers and all('next_index' in w for w in workers):
    return sum(int(w['next_index']) for w in workers)
  raise ValueError(f'unknown grain iterator state with keys {sorted(grain_state)}')


def grain_state_at(fresh_state: dict, records: int) -> dict:
  """The state of this pipeline after `records` records, from the state of a fresh iterator
  (which gives grain's layout for this worker count)."""
  if 'next_index' in fresh_state:
    return {**fresh_state, 'next_index': records}
  workers = len(fresh_state['iterators_in_use_states'])
  # Worker i reads records i, i + W, ...; the interleave takes them round-robin.
  per_worker = [{**s, 'next_index': (records - i + workers - 1) // workers}
                for i, s in enumerate(fresh_state['iterators_in_use_states'])]
  return {**fresh_state, 'next_index_in_cycle': records % workers,
          'iterators_in_use_states': per_worker}


class LayoutIterator(grain.DatasetIterator):
  """Tags the state with its layout; restores a state from any layout.

  `set_state` takes one process's state (what grain's checkpoint handler passes); `resume_from`
  takes every saved process's state, which a change of process count needs. Both leave a
  one-line `resume_note` when the layout changed (None when restored exactly).
  """

  def __init__(self, parent: grain.DatasetIterator, *, workers: int, processes: int,
               process_index: int, records: int):
    super().__init__(parent)
    # grain's state layout for this worker count, before any worker starts (a restore may
    # start them, and a fallback to an older checkpoint restores again).
    self._fresh_state = parent.get_state()
    self._layout = dict(worker_count=workers, process_count=processes)
    self._index, self._records = process_index, records
    self.resume_note: Optional[str] = None

  def __next__(self):
    return next(self._parent)

  def get_state(self) -> dict:
    return {**self._layout, 'grain': self._parent.get_state()}

  def set_state(self, state: dict) -> None:
    saved_processes = state.get('process_count', self._layout['process_count'])
    if saved_processes != self._layout['process_count']:
      raise UserError(f'the data iterator state was saved by {saved_processes} processes and '
                      f'this run has {self._layout["process_count"]}; restore it with every '
                      "process's state (checkpoints.resume does)")
    self.resume_from([state] * saved_processes)

  def resume_from(self, states: Sequence[dict]) -> None:
    """Continues after `states`, the saved states of processes 0..P-1 in order (JSON dicts as
    `get_state` returns them, or as the worker-count tag before the process count was added).

    Raises UserError when the layout changed and a state is not one of grain's layouts that
    `records_read` knows, naming both layouts.
    """
    saved = dict(worker_count=states[0].get('worker_count'),
                 process_count=states[0].get('process_count', len(states)))
    if saved == self._layout:
      self._parent.set_state(states[self._index]['grain'])
      self.resume_note = None
      return
    processes = self._layout['process_count']
    try:
      read = [records_read(s['grain']) for s in states]
    except (KeyError, ValueError) as e:
      raise UserError(f'the data iterator state saved by {_layout(saved)} cannot be carried to '
                      f'{_layout(self._layout)} ({e}); resume with the saved layout') from None
    shard, saved_shard = self._records // processes, self._records // saved['process_count']
    if saved['process_count'] == processes:
      position = read[self._index]
    else:  # The same progress in epochs, rounded to a record of the new shard.
      whole = saved_shard * saved['process_count']
      position = (2 * sum(read) * shard + whole) // (2 * whole)
    self._parent.set_state(grain_state_at(self._fresh_state, position))
    epoch, offset = divmod(position, shard)
    order = ('the sample order is unchanged' if saved['process_count'] == processes else
             'the sample order from here on differs from the saved layout\'s')
    self.resume_note = (
        f'the data iterator was saved by {_layout(saved)}, this run has '
        f'{_layout(self._layout)}: input position re-derived for it: epoch {epoch}, record '
        f"{offset} of the {shard} in this process's shard; {order}")


def _layout(layout: dict) -> str:
  p, w = layout['process_count'], layout['worker_count']
  return (f'{counted(p, "process", "processes")} x '
          f'{counted(w, "data worker", "data workers")}')


class LayoutDataset(grain.IterDataset):
  """The training dataset as the trainers see it: its iterators are `LayoutIterator`s."""

  def __init__(self, parent: grain.IterDataset, *, workers: int, processes: int,
               process_index: int, records: int):
    super().__init__(parent)
    self._kwargs = dict(workers=workers, processes=processes, process_index=process_index,
                        records=records)

  def __iter__(self) -> LayoutIterator:
    return LayoutIterator(self._parent.__iter__(), **self._kwargs)
