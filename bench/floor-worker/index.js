// The bench's floor Worker: see wrangler.toml. Plain JavaScript, no dependencies.

const JSON_HEADERS = { "content-type": "application/json" };
const NIL_ID = "00000000-0000-0000-0000-000000000000";

export default {
  async fetch(request, env) {
    const requestId = crypto.randomUUID();
    const headers = { ...JSON_HEADERS, "x-request-id": requestId };
    const { pathname } = new URL(request.url);
    if (pathname !== "/sync") {
      return new Response('{"error":{"code":"not_found"}}', { status: 404, headers });
    }
    const authorization = request.headers.get("authorization");
    if (!authorization) {
      return new Response('{"error":{"code":"unauthorized"}}', { status: 401, headers });
    }
    const answer = await fetch(`${env.POSTGREST_URL}/rpc/edgesync_pull`, {
      method: "POST",
      headers: { ...JSON_HEADERS, authorization },
      body: JSON.stringify({ since_txid: "0", since_id: NIL_ID, since_origin: "0", tables: null, lim: 1000 }),
    });
    return new Response(answer.body, { status: answer.status, headers });
  },
};
