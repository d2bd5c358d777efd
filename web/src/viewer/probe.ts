// Timing marks for the benchmark and the end-to-end tests (window.hilumProbe).
import type { DisplaySet } from './study';

interface Mark { series: string; requested: number; first?: number; loaded?: number; failed?: number; streamed?: number; frames: number }

const marks: Mark[] = [];
(window as unknown as { hilumProbe: unknown }).hilumProbe = { marks };

function mark(set: DisplaySet): Mark {
  let m = marks.find((x) => x.series === set.seriesUid && x.loaded === undefined);
  if (!m) {
    m = { series: set.seriesUid, requested: performance.now(), frames: set.imageIds.length };
    marks.push(m);
  }
  return m;
}

export const probe = {
  stackRequested(set: DisplaySet, at: number): void {
    const m = mark(set);
    m.requested = Math.min(m.requested, at);
  },
  firstImage(set: DisplaySet, at: number): void {
    mark(set).first ??= at;
  },
  seriesLoaded(set: DisplaySet, at: number, failed: number, streamed = 0): void {
    const m = mark(set);
    m.loaded = at;
    m.failed = failed;
    m.streamed = streamed; // frames that came with the one-request series retrieve
  },
};
