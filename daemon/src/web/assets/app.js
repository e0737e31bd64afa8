// The chatsync web client: the local API's routes (/v1), behind this browser's session, and
// its event stream for everything that happens on other devices. Text from messages is only
// ever set as text (textContent), never parsed as HTML.
'use strict';

const PAGE = 50;
const REACTIONS = ['👍', '❤️', '😂', '🎉', '😮'];
const $ = (id) => document.getElementById(id);

const state = {
  me: null,            // this device's id
  chats: new Map(),    // id -> chat (from the API), with .unread and .last once known
  open: null,          // id of the chat shown
  messages: new Map(), // id -> message of the open chat
  order: [],           // ids of the open chat's messages, oldest first
  more: false,         // whether earlier messages may exist
  replyTo: null,
};

class Unlinked extends Error {}

// The page's half of the session (the cookie is the other): handed over once in the address's
// fragment by the link page, then kept in this origin's storage.
const KEY = 'chatsync_key';
let key = '';
(function takeKey() {
  const given = /(?:^#|&)key=([0-9a-f]{64})/.exec(location.hash);
  try {
    if (given) localStorage.setItem(KEY, given[1]);
    key = localStorage.getItem(KEY) || '';
  } catch (e) {
    // Storage blocked: this page works until it is closed.
    key = given ? given[1] : '';
  }
  if (given) history.replaceState(null, '', location.pathname);
})();

function headers() {
  return { 'X-Chatsync-Key': key };
}

async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: headers() };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await answered(fetch('/v1' + path, init));
  return res.status === 204 ? null : res.json();
}

// A response that is not an error: 401 shows how to link again; other errors throw their
// message.
async function answered(request) {
  const res = await request;
  if (res.status === 401) {
    showUnlinked();
    throw new Unlinked();
  }
  if (!res.ok) {
    const err = await res.json().catch(() => ({}));
    throw new Error((err.error && err.error.message) || res.statusText);
  }
  return res;
}

function showError(e) {
  if (e instanceof Unlinked) return;
  const box = $('error');
  box.textContent = e.message || String(e);
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { box.hidden = true; }, 5000);
}

function showUnlinked() {
  $('app').hidden = true;
  $('unlinked').hidden = false;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function button(label, onClick, title) {
  const b = el('button', '', label);
  b.type = 'button';
  if (title) b.title = title;
  b.addEventListener('click', (ev) => { ev.stopPropagation(); onClick(); });
  return b;
}

function time(ms) {
  const d = new Date(ms);
  const today = new Date();
  return d.toDateString() === today.toDateString()
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

// ---- the chat list ----

function sortedChats() {
  return [...state.chats.values()].sort((a, b) => b.last_activity - a.last_activity);
}

// The chat list, newest first. Each chat keeps its element (updated in place), so that a
// click or the keyboard's focus is never lost to a re-render.
function renderChatList() {
  const list = $('chat-list');
  const items = new Map([...list.children].map((li) => [li.dataset.chat, li]));
  const ordered = sortedChats().map((chat) => {
    let li = items.get(chat.id);
    if (!li) {
      li = el('li');
      li.tabIndex = 0;
      li.dataset.chat = chat.id;
      li.setAttribute('role', 'button');
      li.addEventListener('click', () => openChat(chat.id));
      li.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') openChat(chat.id); });
    }
    // (Observing one already observed changes nothing.)
    if (chat.unread === undefined) inView.observe(li);
    fillChatItem(li, chat);
    return li;
  });
  list.replaceChildren(...ordered);
}

function fillChatItem(li, chat) {
  if (chat.id === state.open) li.setAttribute('aria-current', 'true');
  else li.removeAttribute('aria-current');
  const parts = [el('span', 'title', chat.title)];
  if (chat.unread) parts.push(el('span', 'unread', String(chat.unread)));
  parts.push(el('span', 'last', chat.last ? `${chat.last.author_name}: ${preview(chat.last)}` : ''));
  li.replaceChildren(...parts);
}

let renderQueued = false;
function renderChatListSoon() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderChatList();
  });
}

function preview(message) {
  if (message.deleted) return 'deleted';
  const first = message.text.split('\n')[0].slice(0, 120);
  if (first || !(message.attachments && message.attachments.length)) return first;
  return `📎 ${message.attachments.map((a) => a.name).join(', ')}`;
}

// Unread counts and last messages cost a read of each chat: each is asked for as its entry
// comes into view, four at a time.
const summaries = { queue: [], running: 0, asked: new Set() };
const inView = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    const id = entry.target.dataset.chat;
    inView.unobserve(entry.target);
    if (!summaries.asked.has(id)) {
      summaries.asked.add(id);
      summaries.queue.push(id);
    }
  }
  pumpSummaries();
});

function pumpSummaries() {
  while (summaries.running < 4 && summaries.queue.length) {
    const id = summaries.queue.shift();
    summaries.running += 1;
    fetchSummary(id).finally(() => {
      summaries.running -= 1;
      pumpSummaries();
    });
  }
}

async function fetchSummary(id) {
  const before = state.chats.get(id);
  if (!before || before.unread !== undefined) return;
  let unread = 0;
  let last = null;
  try {
    const [read, page] = await Promise.all([
      api('GET', `/chats/${id}/read`),
      api('GET', `/chats/${id}/messages?limit=1`),
    ]);
    unread = read.unread;
    last = page.messages[page.messages.length - 1] || null;
  } catch (e) {
    // Shown without them.
  }
  // The chat's entry may have been replaced meanwhile (an event, a reload of the list).
  const chat = state.chats.get(id);
  if (!chat) return;
  chat.unread = unread;
  chat.last = last;
  renderChatListSoon();
}

async function loadChats() {
  const { chats } = await api('GET', '/chats');
  const known = state.chats;
  state.chats = new Map(chats.map((c) => {
    const old = known.get(c.id);
    if (!old) return [c.id, c];
    // A chat that changed since its summary was read gets it read again.
    const changed = old.last_activity !== c.last_activity || old.messages !== c.messages;
    return [c.id, changed ? { ...c, unread: undefined, last: undefined } : { ...old, ...c }];
  }));
  summaries.asked.clear();
  renderChatList();
}

// ---- a chat's messages ----

async function openChat(id) {
  state.open = id;
  state.messages = new Map();
  state.order = [];
  state.replyTo = null;
  $('replying').hidden = true;
  $('devices').hidden = true;
  $('chat').hidden = false;
  $('app').classList.add('chat-open');
  const chat = state.chats.get(id);
  $('chat-title').textContent = chat ? chat.title : '';
  $('messages').replaceChildren();
  renderChatList();
  try {
    const page = await api('GET', `/chats/${id}/messages?limit=${PAGE}`);
    if (state.open !== id) return;
    for (const m of page.messages) remember(m);
    state.more = page.messages.length === PAGE;
    renderMessages();
    scrollToEnd();
    markRead();
    $('text').focus();
  } catch (e) {
    showError(e);
  }
}

function remember(message) {
  if (!state.messages.has(message.id)) state.order.push(message.id);
  state.messages.set(message.id, message);
}

async function loadOlder() {
  const id = state.open;
  const oldest = state.order[0];
  if (!oldest) return;
  const scroller = $('scroller');
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  try {
    const page = await api('GET', `/chats/${id}/messages?limit=${PAGE}&before=${oldest}`);
    if (state.open !== id) return;
    const older = page.messages.filter((m) => !state.messages.has(m.id));
    for (const m of older) state.messages.set(m.id, m);
    state.order = older.map((m) => m.id).concat(state.order);
    state.more = page.messages.length === PAGE;
    renderMessages();
    scroller.scrollTop = scroller.scrollHeight - fromBottom;
  } catch (e) {
    showError(e);
  }
}

function renderMessages() {
  const list = $('messages');
  list.replaceChildren(...state.order.map((id) => messageElement(state.messages.get(id))));
  $('older').hidden = !state.more;
}

function messageElement(m) {
  const li = el('li', 'msg');
  li.dataset.id = m.id;
  if (m.author === state.me) li.classList.add('mine');
  if (m.deleted) li.classList.add('deleted');
  const meta = el('div', 'meta');
  meta.append(el('span', 'author', m.author_name), el('time', '', time(m.ts)));
  if (m.edited && !m.deleted) meta.append(el('span', '', 'edited'));
  li.append(meta);
  if (m.reply_to) {
    const quoted = state.messages.get(m.reply_to);
    li.append(el('div', 'quote', quoted ? `${quoted.author_name}: ${preview(quoted)}` : 'a reply'));
  }
  li.append(el('div', 'text', m.deleted ? 'This message was deleted.' : m.text));
  if (!m.deleted && m.attachments && m.attachments.length) li.append(attachmentsElement(m));
  const counts = new Map();
  for (const r of Object.values(m.reactions || {})) counts.set(r, (counts.get(r) || 0) + 1);
  if (counts.size) {
    const reactions = el('div', 'reactions');
    for (const [r, n] of counts) reactions.append(el('span', '', n > 1 ? `${r} ${n}` : r));
    li.append(reactions);
  }
  if (!m.deleted) li.append(actions(m));
  return li;
}

// Attachments: images show in the message as previews the device makes (read with the page's
// key, so through an object URL); every file has a button that saves it, fetching it from
// another device first when it is not on this one.
const PREVIEWED = ['image/png', 'image/jpeg', 'image/gif', 'image/webp'];
const objectUrls = new Map();

function size(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let n = bytes;
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u += 1;
  }
  return u === 0 ? `${n} B` : `${n.toFixed(1)} ${units[u]}`;
}

function attachmentPath(m, index) {
  return `/chats/${m.chat}/messages/${m.id}/attachments/${index}`;
}

async function attachmentBlob(m, index, preview) {
  const path = attachmentPath(m, index) + (preview ? '/thumbnail' : '');
  const res = await answered(fetch('/v1' + path, { credentials: 'same-origin', headers: headers() }));
  return res.blob();
}

function attachmentsElement(m) {
  const box = el('div', 'attachments');
  m.attachments.forEach((a, index) => {
    if (a.present && PREVIEWED.includes(a.media_type)) {
      const img = el('img', 'inline');
      img.alt = a.name;
      img.dataset.hash = a.hash;
      const known = objectUrls.get(a.hash);
      if (known) {
        img.src = known;
      } else {
        attachmentBlob(m, index, true)
          .then((blob) => {
            const url = URL.createObjectURL(blob);
            objectUrls.set(a.hash, url);
            img.src = url;
          })
          .catch(showError);
      }
      box.append(img);
    }
    const label = `${a.name} (${size(a.size)})${a.present ? '' : ' · on another device'}`;
    const save = button(label, () => saveAttachment(m, index, a, save), 'Save this file');
    save.classList.add('file');
    box.append(save);
  });
  return box;
}

async function saveAttachment(m, index, a, control) {
  control.disabled = true;
  try {
    if (!a.present) {
      control.textContent = `${a.name}: fetching…`;
      await api('POST', `/chats/${m.chat}/messages/${m.id}/attachments/fetch`);
    }
    const blob = await attachmentBlob(m, index, false);
    const url = URL.createObjectURL(blob);
    const link = el('a');
    link.href = url;
    link.download = a.name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (e) {
    showError(e);
  } finally {
    control.disabled = false;
    control.textContent = `${a.name} (${size(a.size)})`;
  }
}

// An attachment arrived: messages naming it are shown again, now with it.
function attachmentStored(hash) {
  for (const m of state.messages.values()) {
    const named = (m.attachments || []).filter((a) => a.hash === hash);
    if (named.length) {
      for (const a of named) a.present = true;
      showMessage(m, false);
    }
  }
}

async function uploadFile(file) {
  const res = await answered(fetch('/v1/blobs', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { ...headers(), 'Content-Type': 'application/octet-stream' },
    body: file,
  }));
  const blob = await res.json();
  return { hash: blob.hash, name: file.name, media_type: file.type || 'application/octet-stream' };
}

function showPicked() {
  const files = Array.from($('files').files);
  const picked = $('picked');
  picked.hidden = files.length === 0;
  picked.textContent = files.map((f) => `📎 ${f.name} (${size(f.size)})`).join('  ');
}

function actions(m) {
  const row = el('div', 'actions');
  row.append(button('Reply', () => startReply(m)));
  const mine = (m.reactions || {})[state.me];
  for (const r of REACTIONS) {
    const b = button(r, () => react(m, mine === r ? null : r), mine === r ? 'Take back' : 'React');
    if (mine === r) b.setAttribute('aria-pressed', 'true');
    row.append(b);
  }
  if (m.author === state.me) {
    row.append(button('Edit', () => startEdit(m)), button('Delete', () => remove(m)));
  }
  return row;
}

// Shows a message of the open chat: replaces it where it is, or, for a new message
// (`created`), adds it at the end. Changes to messages not loaded here are left for when they
// are.
function showMessage(m, created) {
  if (m.chat !== state.open) return;
  const known = state.messages.has(m.id);
  if (!known && !created) return;
  remember(m);
  const fresh = messageElement(m);
  fresh.dataset.shownAt = String(Date.now());
  const old = $('messages').querySelector(`li[data-id="${CSS.escape(m.id)}"]`);
  const scroller = $('scroller');
  const atEnd = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  if (old) old.replaceWith(fresh);
  else if (!known) $('messages').append(fresh);
  if (!known && atEnd) scrollToEnd();
}

function scrollToEnd() {
  const scroller = $('scroller');
  scroller.scrollTop = scroller.scrollHeight;
}

let readTimer = null;
function markRead() {
  clearTimeout(readTimer);
  const id = state.open;
  readTimer = setTimeout(async () => {
    if (document.hidden || state.open !== id) return;
    try {
      await api('POST', `/chats/${id}/read`, {});
      const chat = state.chats.get(id);
      if (chat && chat.unread) {
        chat.unread = 0;
        renderChatList();
      }
    } catch (e) {
      showError(e);
    }
  }, 300);
}

// ---- writing ----

async function send(ev) {
  ev.preventDefault();
  const box = $('text');
  const text = box.value;
  const files = Array.from($('files').files);
  if ((!text.trim() && files.length === 0) || !state.open) return;
  const body = { text };
  if (state.replyTo) body.reply_to = state.replyTo;
  $('send').disabled = true;
  try {
    if (files.length) body.attachments = await Promise.all(files.map(uploadFile));
    const m = await api('POST', `/chats/${state.open}/messages`, body);
    box.value = '';
    $('files').value = '';
    showPicked();
    grow();
    state.replyTo = null;
    $('replying').hidden = true;
    showMessage(m, true);
    scrollToEnd();
  } catch (e) {
    showError(e);
  } finally {
    $('send').disabled = false;
    box.focus();
  }
}

function startReply(m) {
  state.replyTo = m.id;
  $('replying-text').textContent = `Replying to ${m.author_name}: ${preview(m)}`;
  $('replying').hidden = false;
  $('text').focus();
}

function cancelReply() {
  state.replyTo = null;
  $('replying').hidden = true;
}

async function react(m, reaction) {
  const path = `/chats/${m.chat}/messages/${m.id}/reaction`;
  try {
    const updated = reaction
      ? await api('PUT', path, { reaction })
      : await api('DELETE', path);
    if (updated) showMessage(updated);
  } catch (e) {
    showError(e);
  }
}

function startEdit(m) {
  const li = $('messages').querySelector(`li[data-id="${CSS.escape(m.id)}"]`);
  if (!li) return;
  const text = li.querySelector('.text');
  const box = el('textarea', 'edit-box');
  box.value = m.text;
  box.setAttribute('aria-label', 'Edit the message');
  text.replaceWith(box);
  box.focus();
  box.addEventListener('keydown', async (ev) => {
    if (ev.key === 'Escape') {
      showMessage(state.messages.get(m.id));
    } else if (ev.key === 'Enter' && !ev.shiftKey) {
      ev.preventDefault();
      try {
        showMessage(await api('PATCH', `/chats/${m.chat}/messages/${m.id}`, { text: box.value }));
      } catch (e) {
        showError(e);
      }
    }
  });
}

async function remove(m) {
  if (!confirm('Delete this message on every device?')) return;
  try {
    showMessage(await api('DELETE', `/chats/${m.chat}/messages/${m.id}`));
  } catch (e) {
    showError(e);
  }
}

function grow() {
  const box = $('text');
  box.style.height = 'auto';
  box.style.height = `${box.scrollHeight}px`;
}

async function createChat() {
  const dialog = $('new-chat-dialog');
  $('new-chat-title').value = '';
  dialog.returnValue = '';
  dialog.showModal();
  dialog.addEventListener('close', async () => {
    const title = $('new-chat-title').value.trim();
    if (dialog.returnValue !== 'create' || !title) return;
    try {
      const chat = await api('POST', '/chats', { title });
      state.chats.set(chat.id, { ...chat, unread: 0, last: null });
      openChat(chat.id);
    } catch (e) {
      showError(e);
    }
  }, { once: true });
}

// ---- devices ----

async function showDevices() {
  $('chat').hidden = true;
  $('devices').hidden = false;
  $('app').classList.add('chat-open');
  $('invite').hidden = true;
  try {
    const [{ devices }, { peers }] = await Promise.all([api('GET', '/devices'), api('GET', '/peers')]);
    const byId = new Map(peers.map((p) => [p.device, p]));
    const list = $('device-list');
    list.replaceChildren();
    for (const d of devices.filter((d) => d.trusted)) {
      const li = el('li');
      li.append(el('div', 'title', d.this_device ? `${d.name} (this device)` : d.name));
      li.append(el('div', 'muted', `${d.this_device ? 'here' : syncState(byId.get(d.id))} · ${d.id.slice(0, 16)}…`));
      list.append(li);
    }
  } catch (e) {
    showError(e);
  }
}

// Whether a device is in sync with this one, as far as this one knows.
function syncState(peer) {
  if (!peer || !peer.connected) {
    return peer && peer.last_sync ? `not connected; last in sync ${time(peer.last_sync)}` : 'not connected';
  }
  const apart = (peer.chats_behind || 0) + (peer.chats_ahead || 0);
  if (apart) return `connected; syncing ${apart} chat${apart === 1 ? '' : 's'}`;
  return 'connected; in sync';
}

async function addDevice() {
  try {
    const invite = await api('POST', '/invites', {});
    $('invite-ticket').textContent = invite.ticket;
    const qr = await fetch(`/web/qr.svg?text=${encodeURIComponent(invite.ticket)}`, {
      credentials: 'same-origin',
      headers: headers(),
    });
    if (qr.ok) $('invite-qr').src = URL.createObjectURL(await qr.blob());
    $('invite-expiry').textContent = `Valid until ${new Date(invite.expires_at).toLocaleTimeString()}.`;
    $('invite').hidden = false;
  } catch (e) {
    showError(e);
  }
}

async function showSync() {
  try {
    const status = await api('GET', '/status');
    state.me = status.device_id;
    const peers = status.peers_connected;
    $('sync-state').textContent = `${status.name} · ${peers} device${peers === 1 ? '' : 's'} connected`;
  } catch (e) {
    showError(e);
  }
}

// ---- live events ----

function onEvent(event) {
  switch (event.type) {
    case 'hello':
      break;
    case 'chat.created':
    case 'chat.updated': {
      const old = state.chats.get(event.chat.id) || {};
      state.chats.set(event.chat.id, { ...old, ...event.chat });
      if (event.chat.id === state.open) $('chat-title').textContent = event.chat.title;
      renderChatList();
      break;
    }
    case 'message.created':
    case 'message.edited':
    case 'message.deleted':
    case 'message.reaction': {
      const m = event.message;
      const chat = state.chats.get(m.chat);
      if (chat) {
        if (event.type === 'message.created') {
          chat.last_activity = Math.max(chat.last_activity, m.ts);
          chat.last = m;
          if (m.chat !== state.open && m.author !== state.me && chat.unread !== undefined) chat.unread += 1;
        } else if (chat.last && chat.last.id === m.id) {
          chat.last = m;
        }
        renderChatList();
      }
      showMessage(m, event.type === 'message.created');
      if (m.chat === state.open && event.type === 'message.created' && m.author !== state.me) markRead();
      break;
    }
    case 'read.updated': {
      const chat = state.chats.get(event.chat);
      if (chat && event.device === state.me && chat.unread) {
        chat.unread = 0;
        renderChatList();
      }
      break;
    }
    case 'attachment.stored':
      attachmentStored(event.hash);
      break;
    case 'lagged':
      // Events were dropped: read again what is shown.
      refresh();
      break;
    case 'peer.up':
    case 'peer.down':
    case 'device.added':
    case 'device.removed':
    case 'paired':
      showSync();
      if (!$('devices').hidden) showDevices();
      break;
    default:
      break;
  }
}

async function listen() {
  for (;;) {
    try {
      const res = await fetch('/v1/events', { credentials: 'same-origin', headers: headers() });
      if (res.status === 401) {
        showUnlinked();
        return;
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      let first = true;
      try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let at;
        while ((at = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, at).trim();
          buffer = buffer.slice(at + 1);
          if (!line) continue;
          const event = JSON.parse(line);
          onEvent(event);
          if (first && event.type === 'hello') {
            first = false;
            // Subscribed: anything from here on arrives as an event. Catch up on what
            // happened while the stream was down.
            if (listen.reconnecting) await refresh();
          }
        }
      }
      } finally {
        reader.cancel().catch(() => {});
      }
    } catch (e) {
      // The daemon went away or the network dropped: try again shortly.
    }
    listen.reconnecting = true;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// Catches up after the event stream was down: the chat list, and the newest messages of the
// open chat (added or replaced where they are; what is loaded above them stays).
async function refresh() {
  await loadChats().catch(showError);
  const id = state.open;
  if (!id) return;
  try {
    const page = await api('GET', `/chats/${id}/messages?limit=${PAGE}`);
    if (state.open !== id) return;
    if (page.messages.length === PAGE && !page.messages.some((m) => state.messages.has(m.id))) {
      // More arrived than a page: what is shown would have a gap.
      openChat(id);
      return;
    }
    for (const m of page.messages) showMessage(m, true);
  } catch (e) {
    showError(e);
  }
}

// ---- start ----

function wire() {
  $('composer').addEventListener('submit', send);
  $('text').addEventListener('input', grow);
  $('text').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey) {
      ev.preventDefault();
      $('composer').requestSubmit();
    } else if (ev.key === 'Escape') {
      cancelReply();
    }
  });
  $('cancel-reply').addEventListener('click', cancelReply);
  $('attach').addEventListener('click', () => $('files').click());
  $('files').addEventListener('change', showPicked);
  $('older').addEventListener('click', loadOlder);
  $('scroller').addEventListener('scroll', () => {
    if (state.more && $('scroller').scrollTop < 40) {
      state.more = false;
      loadOlder();
    }
  });
  $('new-chat').addEventListener('click', createChat);
  $('show-devices').addEventListener('click', showDevices);
  $('devices-back').addEventListener('click', () => {
    $('devices').hidden = true;
    $('app').classList.remove('chat-open');
    if (state.open) $('chat').hidden = false;
  });
  $('add-device').addEventListener('click', addDevice);
  $('back').addEventListener('click', () => $('app').classList.remove('chat-open'));
  document.addEventListener('visibilitychange', () => { if (!document.hidden && state.open) markRead(); });
}

async function start() {
  wire();
  try {
    await showSync();
    if (!state.me) return;
    $('unlinked').hidden = true;
    $('app').hidden = false;
    listen();
    await loadChats();
  } catch (e) {
    showError(e);
  }
}

start();
