// Cornerstone3D set-up, once per page: rendering, the DICOMweb image loader, tools.
import * as core from '@cornerstonejs/core';
import * as tools from '@cornerstonejs/tools';
import * as loader from '@cornerstonejs/dicom-image-loader';

export { core, tools, loader };

let ready: Promise<void> | null = null;

type Stats = Record<string, { value?: unknown; index?: number[] }>;

/** Cornerstone's probe looks a stack image's value up at k = its index in the stack, where
 * a single image has only k = 0, and so shows no value past the first image: read k = 0. */
class HilumProbeTool extends tools.ProbeTool {
  static toolName = tools.ProbeTool.toolName;

  _calculateCachedStats(...args: unknown[]): Stats {
    const base = tools.ProbeTool.prototype as unknown as { _calculateCachedStats: (...a: unknown[]) => Stats };
    const stats = base._calculateCachedStats.apply(this, args);
    for (const [targetId, entry] of Object.entries(stats ?? {})) {
      if (entry && entry.value === undefined && Array.isArray(entry.index)) {
        const image = (this as unknown as { getTargetImageData: (id: string) => { voxelManager?: { getAtIJKPoint: (p: number[]) => unknown } } | undefined })
          .getTargetImageData(targetId);
        const value = image?.voxelManager?.getAtIJKPoint([entry.index[0], entry.index[1], 0]);
        if (value !== undefined) entry.value = value;
      }
    }
    return stats;
  }
}

export function initCornerstone(): Promise<void> {
  ready ??= (async () => {
    core.init();
    loader.init({
      maxWebWorkers: Math.max(2, Math.min(4, navigator.hardwareConcurrency || 2)),
      strict: false,
    });
    core.volumeLoader.registerVolumeLoader(
      'cornerstoneStreamingImageVolume',
      core.cornerstoneStreamingImageVolumeLoader as unknown as Parameters<typeof core.volumeLoader.registerVolumeLoader>[1],
    );
    // Frames are fetched through a pool: many at once for a fast whole series, with
    // the image on screen first ("interaction" requests run before "prefetch").
    core.imageRetrievalPoolManager.setMaxSimultaneousRequests(core.Enums.RequestType.Interaction, 12);
    core.imageRetrievalPoolManager.setMaxSimultaneousRequests(core.Enums.RequestType.Prefetch, 12);
    core.imageLoadPoolManager.setMaxSimultaneousRequests(core.Enums.RequestType.Interaction, 12);
    core.imageLoadPoolManager.setMaxSimultaneousRequests(core.Enums.RequestType.Prefetch, 12);
    core.cache.setMaxCacheSize(1024 * 1024 * 1024 * 1.5);
    tools.init();
    for (const Tool of [
      tools.WindowLevelTool, tools.PanTool, tools.ZoomTool, tools.StackScrollTool, tools.PlanarRotateTool,
      tools.MagnifyTool, tools.LengthTool, tools.AngleTool, tools.EllipticalROITool, tools.RectangleROITool,
      HilumProbeTool, tools.ArrowAnnotateTool, tools.LabelTool, tools.CrosshairsTool,
    ]) {
      tools.addTool(Tool);
    }
  })();
  return ready;
}

/** Tool names as the toolbar and shortcuts know them. */
export const TOOL = {
  wl: tools.WindowLevelTool.toolName,
  pan: tools.PanTool.toolName,
  zoom: tools.ZoomTool.toolName,
  scroll: tools.StackScrollTool.toolName,
  rotate: tools.PlanarRotateTool.toolName,
  magnify: tools.MagnifyTool.toolName,
  length: tools.LengthTool.toolName,
  angle: tools.AngleTool.toolName,
  ellipse: tools.EllipticalROITool.toolName,
  rectangle: tools.RectangleROITool.toolName,
  probe: tools.ProbeTool.toolName,
  arrow: tools.ArrowAnnotateTool.toolName,
  text: tools.LabelTool.toolName,
  crosshairs: tools.CrosshairsTool.toolName,
} as const;
export type ToolKey = keyof typeof TOOL;
export const MEASUREMENT_TOOLS: ToolKey[] = ['length', 'angle', 'ellipse', 'rectangle', 'probe', 'arrow', 'text'];
