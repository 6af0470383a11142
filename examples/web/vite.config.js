import { defineConfig } from 'vite';

// The app is served from its own origin (http://127.0.0.1:5173), so every call to
// the edgesync functions is a cross-origin request: CORS is exercised as in
// production. `base: './'` lets the built app be served from any path.
export default defineConfig({
  base: './',
  build: { target: 'es2022', sourcemap: true },
});
