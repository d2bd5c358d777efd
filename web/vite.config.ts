import { defineConfig } from 'vite';

// Hilum serves the built files (web/dist) at /; the dev server proxies the APIs
// to a running `hilum serve` (HILUM_URL, default http://127.0.0.1:8042).
const target = process.env.HILUM_URL ?? 'http://127.0.0.1:8042';

export default defineConfig({
  base: '/',
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
