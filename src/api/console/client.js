// Pulsar Relay browser client: one dependency-free ES module, served by the relay at
// GET /client.js (this file, embedded in the binary).
//
//   import { PulsarClient } from '/client.js';
//   const client = new PulsarClient({ token, topics: ['news'], onMessage: (m) => show(m) });
//   client.start();
//
// It connects with a token (WebSocket, or Server-Sent Events where WebSocket is blocked),
// subscribes, reconnects with exponential backoff and jitter, and resumes every topic right
// after the last message it delivered (or, with `clientId`, from the durable consumer's
// position), so that a reconnect neither loses nor repeats a message within what the relay
// retains. It renews the token before it expires (through the WebSocket `auth` frame, or by
// reopening the event stream) when given `getToken`, and acknowledges messages of a
// durable consumer once `onMessage` has handled them.

/** Parses a message ID (`<ms>-<seq>`) into two numbers for comparison. */
function parseId(id) {
  const dash = id.indexOf('-');
  return dash < 0 ? [Number(id), 0] : [Number(id.slice(0, dash)), Number(id.slice(dash + 1))];
}

/** Negative, zero or positive as message ID `a` is older than, equal to or newer than `b`. */
export function compareIds(a, b) {
  const [am, as] = parseId(a);
  const [bm, bs] = parseId(b);
  return am === bm ? as - bs : am - bm;
}

/** The `exp` claim of a JWT, in milliseconds (undefined when it cannot be read). */
export function tokenExpiry(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
    return typeof claims.exp === 'number' ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

const DEFAULTS = {
  url: undefined, // the relay's base URL; default: the page's origin
  token: undefined, // an access token with `read`
  getToken: undefined, // async () => a fresh token: called before expiry and after a refusal
  topics: [],
  clientId: undefined, // a durable consumer: resumes from its position, acknowledges
  since: 'latest', // where the first connection starts: 'latest', 'earliest' or a message ID
  onMessage: () => {}, // (delivery object) => void | Promise
  onState: () => {}, // (state, detail): 'connecting' | 'live' | 'waiting' | 'closed'
  onError: () => {}, // ({code, message}) from the relay or the client
  transport: 'auto', // 'auto' (WebSocket, else SSE), 'websocket' or 'sse'
  autoAck: true, // with clientId: acknowledge each message once onMessage has handled it
  minDelay: 500, // ms: the first reconnection delay; doubles per failure, with jitter
  maxDelay: 15000,
  renewBefore: 60, // seconds before expiry at which getToken is asked for a new token
  openTimeout: 5000, // ms a WebSocket may take to open before it counts as blocked
  WebSocket: undefined, // the WebSocket class (default: the global one)
};

export class PulsarClient {
  constructor(options) {
    this.options = { ...DEFAULTS, ...options };
    this.token = this.options.token;
    /** Per topic, the ID of the last message delivered to onMessage. */
    this.cursors = new Map();
    /** Server time (ms) of the first subscription: where topics with no delivery yet resume. */
    this.anchor = undefined;
    this.transport = this.options.transport === 'sse' ? 'sse' : 'websocket';
    this.failures = 0;
    this.blockedAttempts = 0;
    this.socket = undefined;
    this.source = undefined;
    this.timers = new Set();
    this.renewTimer = undefined;
    this.closed = true;
    this.state = 'closed';
  }

  /** Connects and keeps connected until close(). */
  start() {
    if (!this.closed) return this;
    this.closed = false;
    this.connect();
    return this;
  }

  /** Disconnects for good. */
  close() {
    this.closed = true;
    this.timers.forEach(clearTimeout);
    this.timers.clear();
    clearTimeout(this.renewTimer);
    this.detach();
    this.setState('closed');
  }

  /** The last message ID delivered per topic. */
  get lastIds() {
    return Object.fromEntries(this.cursors);
  }

  /** Acknowledges `messageId` (and everything before it in its topic) for the consumer. */
  async ack(messageId, topic) {
    const clientId = this.options.clientId;
    if (!clientId) throw new Error('acknowledgements need a clientId');
    if (this.socket && this.socket.readyState === 1) {
      this.socket.send(JSON.stringify({ type: 'ack', message_id: messageId, topic }));
      return;
    }
    const resp = await fetch(this.base() + '/api/v1/ack', {
      method: 'POST',
      headers: { Authorization: `Bearer ${this.token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ message_ids: [messageId], client_id: clientId, topic }),
    });
    if (!resp.ok) this.report({ code: 'ACK_FAILED', message: `ack answered ${resp.status}` });
  }

  // --- connection ------------------------------------------------------------------------

  base() {
    return (this.options.url || globalThis.location.origin).replace(/\/+$/, '');
  }

  setState(state, detail) {
    if (this.state === state) return;
    this.state = state;
    this.options.onState(state, detail);
  }

  report(error) {
    this.options.onError(error);
  }

  later(fn, ms) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
  }

  detach() {
    if (this.socket) {
      const socket = this.socket;
      this.socket = undefined;
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close(1000);
      } catch {
        // Closing a socket that never opened may throw; it is gone either way.
      }
    }
    if (this.source) {
      this.source.close();
      this.source = undefined;
    }
  }

  async connect() {
    if (this.closed) return;
    this.detach();
    this.setState('connecting');
    const expiry = this.token && tokenExpiry(this.token);
    if (this.options.getToken && (!this.token || (expiry && expiry <= Date.now()))) {
      if (!(await this.renewToken())) return this.retry();
    }
    if (this.closed) return;
    this.scheduleRenewal();
    if (this.transport === 'sse') this.openEventStream();
    else this.openWebSocket();
  }

  /** Reconnects after a delay that doubles with each failure, with jitter. */
  retry() {
    if (this.closed) return;
    this.detach();
    const ceiling = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** this.failures);
    this.failures = Math.min(this.failures + 1, 30);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.setState('waiting', { delay });
    this.later(() => this.connect(), delay);
  }

  /** Where each topic resumes: after its last delivery, else the anchor, else `since`. */
  resumePoint(topic) {
    const cursor = this.cursors.get(topic);
    if (cursor) return cursor;
    if (this.anchor !== undefined) return `${this.anchor - 1}-18446744073709551615`;
    if (this.options.clientId) return undefined; // the consumer's position
    return this.options.since;
  }

  deliver(msg) {
    const last = this.cursors.get(msg.topic);
    if (last && compareIds(msg.message_id, last) <= 0) return; // already delivered
    this.cursors.set(msg.topic, msg.message_id);
    let handled;
    try {
      handled = this.options.onMessage(msg);
    } catch (e) {
      this.report({ code: 'HANDLER_FAILED', message: String(e) });
      return;
    }
    if (this.options.clientId && this.options.autoAck) {
      Promise.resolve(handled).then(
        () => this.ack(msg.message_id, msg.topic),
        (e) => this.report({ code: 'HANDLER_FAILED', message: String(e) }),
      );
    }
  }

  // --- WebSocket -------------------------------------------------------------------------

  openWebSocket() {
    const Impl = this.options.WebSocket || globalThis.WebSocket;
    const url = this.base().replace(/^http/, 'ws') + '/ws';
    let socket;
    try {
      // The token travels as a subprotocol, not in the URL (which logs keep).
      socket = new Impl(url, ['bearer', `bearer.${this.token}`]);
    } catch {
      return this.webSocketBlocked();
    }
    this.socket = socket;
    let opened = false;
    const openTimer = setTimeout(() => {
      if (!opened && this.socket === socket) this.webSocketBlocked();
    }, this.options.openTimeout);
    socket.onopen = () => {
      opened = true;
      clearTimeout(openTimer);
      this.blockedAttempts = 0;
      this.subscribe();
    };
    socket.onmessage = (event) => this.onFrame(JSON.parse(event.data));
    socket.onclose = (event) => {
      clearTimeout(openTimer);
      if (this.socket !== socket) return;
      this.socket = undefined;
      if (!opened) return this.webSocketBlocked();
      this.onClosed(event.code, event.reason);
    };
  }

  /** A WebSocket that never opened: in `auto` mode, twice in a row means use SSE. */
  webSocketBlocked() {
    this.blockedAttempts += 1;
    if (this.options.transport === 'auto' && this.blockedAttempts >= 2) {
      this.transport = 'sse';
      this.report({ code: 'WEBSOCKET_BLOCKED', message: 'falling back to Server-Sent Events' });
      return this.connect();
    }
    this.retry();
  }

  /** One subscribe frame per resume point (topics starting at the same place share one). */
  subscribe() {
    const groups = new Map();
    for (const topic of this.options.topics) {
      const since = this.resumePoint(topic);
      const key = since === undefined ? '' : since;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(topic);
    }
    for (const [since, topics] of groups) {
      const frame = { type: 'subscribe', topics };
      if (since !== '') frame.since = since;
      if (this.options.clientId) frame.client_id = this.options.clientId;
      this.socket.send(JSON.stringify(frame));
    }
  }

  onFrame(frame) {
    switch (frame.type) {
      case 'message':
        return this.deliver(frame);
      case 'subscribed':
        if (this.anchor === undefined) this.anchor = Date.parse(frame.timestamp);
        this.failures = 0;
        return this.setState('live', { transport: 'websocket' });
      case 'authenticated':
        return this.scheduleRenewal();
      case 'error':
        if (frame.code === 'REPLAY_TRUNCATED') return this.subscribe(); // fetch the rest
        return this.report({ code: frame.code, message: frame.message, count: frame.count });
      default:
        return undefined;
    }
  }

  async onClosed(code, reason) {
    if (code === 4001 && this.options.getToken) {
      // Expired before a renewal went through: renew, then come back at once.
      if (await this.renewToken()) return this.connect();
    }
    if (code === 4001 || code === 4003) {
      this.report({ code: code === 4001 ? 'TOKEN_EXPIRED' : 'ACCESS_REVOKED', message: reason });
      if (!this.options.getToken) return this.close();
    }
    this.retry();
  }

  // --- Server-Sent Events ----------------------------------------------------------------

  async openEventStream() {
    // Taken before the stream opens, kept for later connections (not this one's `since`).
    const anchor = this.anchor === undefined ? await this.serverTime() : this.anchor;
    if (this.closed) return;
    // One stream carries every topic from one cursor: the oldest resume point, so that no
    // topic misses anything; what a topic already delivered is skipped by its cursor.
    const points = this.options.topics.map((t) => this.resumePoint(t));
    const ids = points.filter((p) => p && p !== 'latest' && p !== 'earliest');
    let since;
    if (points.includes('earliest')) since = 'earliest';
    else if (ids.length) since = ids.reduce((a, b) => (compareIds(a, b) <= 0 ? a : b));
    else if (points.includes('latest')) since = 'latest';
    const query = new URLSearchParams({ topics: this.options.topics.join(','), token: this.token });
    if (since) query.set('since', since);
    if (this.options.clientId) query.set('client_id', this.options.clientId);
    const source = new EventSource(`${this.base()}/api/v1/sse?${query}`);
    this.source = source;
    this.anchor = anchor;
    source.onopen = () => {
      this.failures = 0;
      this.setState('live', { transport: 'sse' });
    };
    source.addEventListener('message', (event) => this.deliver(JSON.parse(event.data)));
    source.addEventListener('relay-error', (event) => {
      const error = JSON.parse(event.data);
      if (error.code === 'REPLAY_TRUNCATED') return this.later(() => this.connect(), 0);
      if (error.code === 'TOKEN_EXPIRED' && this.options.getToken) {
        return this.renewToken().then((ok) => (ok ? this.connect() : this.retry()));
      }
      this.report({ code: error.code, message: error.message, count: error.count });
    });
    // EventSource would reconnect by itself from the last event's ID; with several topics
    // a cursor per topic is exact, so the client reconnects instead.
    source.onerror = () => {
      if (this.source === source) this.retry();
    };
  }

  /**
   * The relay's clock a second ago, from its `Date` header (whole seconds), in ms; where a
   * topic with nothing delivered yet resumes (a stream reports no subscription time).
   */
  async serverTime() {
    try {
      const resp = await fetch(this.base() + '/health', { method: 'HEAD', cache: 'no-store' });
      const date = Date.parse(resp.headers.get('Date'));
      return Number.isNaN(date) ? undefined : date - 1000;
    } catch {
      return undefined;
    }
  }

  // --- token renewal ---------------------------------------------------------------------

  scheduleRenewal() {
    clearTimeout(this.renewTimer);
    const expiry = this.token && tokenExpiry(this.token);
    if (!this.options.getToken || !expiry) return;
    const lifetime = expiry - Date.now();
    const lead = Math.min(this.options.renewBefore * 1000, lifetime / 2);
    this.renewTimer = setTimeout(() => this.renewNow(), Math.max(0, lifetime - lead));
  }

  async renewNow() {
    if (this.closed || !(await this.renewToken())) return;
    if (this.socket && this.socket.readyState === 1) {
      this.socket.send(JSON.stringify({ type: 'auth', token: this.token }));
    } else if (this.source) {
      this.connect(); // a stream cannot change its token: reopen it from the cursors
    } else {
      this.scheduleRenewal();
    }
  }

  async renewToken() {
    try {
      const token = await this.options.getToken();
      if (!token) throw new Error('getToken gave no token');
      this.token = token;
      return true;
    } catch (e) {
      this.report({ code: 'TOKEN_RENEWAL_FAILED', message: String(e) });
      return false;
    }
  }
}
