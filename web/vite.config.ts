import { defineConfig, type Plugin } from 'vite';

// The viewer's code (Cornerstone3D, vtk.js: megabytes) is a separate chunk, loaded when a
// study is opened. Preload it (fetch and compile, not run) with the first page, so that a
// click on a study does not wait for it.
function preloadViewer(): Plugin {
  return {
    name: 'hilum-preload-viewer',
    apply: 'build',
    transformIndexHtml: {
      order: 'post',
      handler(_html, ctx) {
        const chunks = Object.values(ctx.bundle ?? {}).filter(
          (c) => c.type === 'chunk' && ['cs', 'viewer'].includes(c.name),
        );
        return chunks.map((c) => ({
          tag: 'link',
          attrs: { rel: 'modulepreload', href: `/${c.fileName}` },
          injectTo: 'head' as const,
        }));
      },
    },
  };
}

// Hilum serves the built files (web/dist) at /; the dev server proxies the APIs
// to a running `hilum serve` (HILUM_URL, default http://127.0.0.1:8042).
const target = process.env.HILUM_URL ?? 'http://127.0.0.1:8042';

export default defineConfig({
  base: '/',
  plugins: [preloadViewer()],
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    target: 'es2022',
    chunkSizeWarningLimit: 8000,
    sourcemap: false,
  },
  worker: { format: 'es' },
  optimizeDeps: {
    exclude: ['@cornerstonejs/dicom-image-loader'],
    include: [
      'dicom-parser',
      '@cornerstonejs/metadata',
      '@cornerstonejs/codec-libjpeg-turbo-8bit/decodewasmjs',
      '@cornerstonejs/codec-charls/decodewasmjs',
      '@cornerstonejs/codec-openjpeg/decodewasmjs',
      '@cornerstonejs/codec-openjph/wasmjs',
    ],
  },
  server: {
    proxy: {
      '/api': target,
      '/dicomweb': target,
    },
  },
});
