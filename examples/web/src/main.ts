// The example app of @edgesync/client: entries with title, body and tags, kept in
// IndexedDB, written offline, synced live through the /live WebSocket, with the
// conflict and rejection logs and a search box on /search.
//
// Settings come from the query string (`?url=…&token=…`, as the tests and the README
// open it) or from the Connect form, and are kept in localStorage.

import { createClient, protocol, randomUuid, type Client, type Row, type Status } from '@edgesync/client';
import { IndexedDBStorage } from '@edgesync/client/indexeddb';

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

interface Settings {
  url: string;
  token: string;
}

function settings(): Settings | null {
  const q = new URLSearchParams(location.search);
  const url = q.get('url') ?? localStorage.getItem('edgesync.url');
  const token = q.get('token') ?? localStorage.getItem('edgesync.token');
  if (!url || !token) return null;
  localStorage.setItem('edgesync.url', url);
  localStorage.setItem('edgesync.token', token);
  return { url, token };
}

const tags = (value: unknown): string[] => (Array.isArray(value) ? value.map(String) : []);

function text(tag: string, content: string, className?: string): HTMLElement {
  const el = document.createElement(tag);
  el.textContent = content;
  if (className) el.className = className;
  return el;
}

function renderEntries(client: Client, rows: readonly Row[]): void {
  const list = $('entries');
  $('entry-count').textContent = `(${rows.length})`;
  list.replaceChildren(
    ...rows.map((row) => {
      const li = document.createElement('li');
      li.dataset.id = row.id;
      li.append(text('div', String(row.title ?? ''), 'title'));
      if (row.body_markdown) li.append(text('div', String(row.body_markdown), 'body'));
      const tagLine = document.createElement('div');
      for (const t of tags(row.tags)) tagLine.append(text('span', t, 'tag'));
      li.append(tagLine);
      const edit = document.createElement('form');
      edit.className = 'edit';
      const title = document.createElement('input');
      title.name = 'title';
      title.value = String(row.title ?? '');
      title.setAttribute('aria-label', 'title');
      const save = text('button', 'Save', 'save');
      const del = text('button', 'Delete', 'delete') as HTMLButtonElement;
      del.type = 'button';
      edit.append(title, save, del);
      edit.addEventListener('submit', (e) => {
        e.preventDefault();
        void client.patch('entries', row.id, { title: title.value });
      });
      del.addEventListener('click', () => void client.delete('entries', row.id));
      li.append(edit);
      return li;
    }),
  );
}

async function renderLogs(client: Client): Promise<void> {
  const conflicts = await client.conflicts();
  $('conflicts').replaceChildren(
    ...conflicts.map((c) => {
      const theirs = c.serverRow ? `“${String(c.serverRow.title ?? '')}”` : 'no row (deleted)';
      const what =
        c.reason === 'row_missing'
          ? 'not applied: the row was gone'
          : c.status === 'applied'
            ? `your change replaced another device's ${theirs} (last write wins)`
            : `not applied: the server kept ${theirs}`;
      const li = text('li', `${c.table} ${c.id.slice(0, 8)}: ${what}`);
      li.dataset.id = c.id;
      return li;
    }),
  );
  const rejected = await client.rejections();
  $('rejected').replaceChildren(
    ...rejected.map((r) => {
      const li = text('li', `${r.op} ${r.table} ${r.id}: ${r.code}: ${r.message}`);
      li.dataset.id = r.id;
      return li;
    }),
  );
}

function renderStatus(s: Status): void {
  const online = $('online');
  online.dataset.online = String(s.online);
  online.textContent = s.online ? 'online' : 'offline';
  $('state').textContent = s.state;
  $('live-mode').textContent = s.live;
  $('outbox').textContent = String(s.outboxLength);
  $('last-sync').textContent = s.lastPullAt ? new Date(s.lastPullAt).toLocaleTimeString() : 'never';
  const error = $('last-error');
  error.hidden = !s.lastError;
  error.textContent = s.lastError ? `${s.lastError.kind}: ${s.lastError.message}` : '';
}

async function main(): Promise<void> {
  const s = settings();
  if (!s) {
    $('settings').hidden = false;
    $('connect').addEventListener('submit', (e) => {
      e.preventDefault();
      const form = new FormData(e.target as HTMLFormElement);
      const q = new URLSearchParams({ url: String(form.get('url')), token: String(form.get('token')) });
      location.search = q.toString();
    });
    return;
  }
  // One local database per user (the token's `sub`).
  const storage = await IndexedDBStorage.open(`edgesync-example-${protocol.tokenSubject(s.token) ?? 'anonymous'}`);
  const client = await createClient({ url: s.url, storage, token: s.token });
  // For the browser tests and the curious: the client of this page.
  (window as unknown as { edgesync: Client }).edgesync = client;
  $('app').hidden = false;

  client.query('entries', { sort: (a, b) => String(a.title ?? '').localeCompare(String(b.title ?? '')) }).subscribe(
    (snap) => renderEntries(client, snap.rows),
  );
  let last = '';
  client.subscribeStatus((status) => {
    renderStatus(status);
    const key = `${status.conflicts}/${status.rejected}`;
    if (key !== last) {
      last = key;
      void renderLogs(client);
    }
  });
  renderStatus(client.getStatus());
  void renderLogs(client);

  $('new-entry').addEventListener('submit', (e) => {
    e.preventDefault();
    const form = e.target as HTMLFormElement;
    const data = new FormData(form);
    const tagList = String(data.get('tags') ?? '')
      .split(',')
      .map((t) => t.trim())
      .filter(Boolean);
    void client.put('entries', randomUuid(), {
      title: String(data.get('title') ?? ''),
      body_markdown: String(data.get('body') ?? ''),
      tags: tagList,
    });
    form.reset();
  });
  $('search').addEventListener('submit', (e) => {
    e.preventDefault();
    const query = String(new FormData(e.target as HTMLFormElement).get('query') ?? '');
    const out = $('search-results');
    out.replaceChildren(text('li', 'searching…'));
    // Similarity of 0.3 and up: a fair floor for small embedding models (the local
    // stack's all-MiniLM-L6-v2) and OpenAI's text-embedding-3 alike.
    client.search(query, { matchThreshold: 0.3 }).then(
      (hits) =>
        out.replaceChildren(
          ...(hits.length
            ? hits.map((h) => text('li', `${h.title ?? '(untitled)'} (${h.similarity.toFixed(2)})`))
            : [text('li', 'nothing found')]),
        ),
      (err: Error) => out.replaceChildren(text('li', `search failed: ${err.message}`)),
    );
  });
  $('sync-now').addEventListener('click', () => void client.sync().catch(() => undefined));
  $('clear-conflicts').addEventListener('click', () => void client.clearConflicts().then(() => renderLogs(client)));
  $('clear-rejected').addEventListener('click', () => void client.clearRejections().then(() => renderLogs(client)));
  // Back online: try at once, not when the backoff of the failures offline ends.
  addEventListener('online', () => {
    client.resetBackoff();
    client.statusChanged();
    void client.sync().catch(() => undefined);
  });
  addEventListener('offline', () => client.statusChanged());
  client.start();
}

void main();
