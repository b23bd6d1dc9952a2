// The Socket.IO peer of loadtest/bench.py (room fan-out): the design a team
// would write instead of giftd's tick batching. One room; every gift a gifter
// emits is sent on at once to every viewer with io.to(room).emit('gift', ...).
// No debit, no ledger, no ranking: it only fans out (a generous peer).
//
//   node server.js PORT      (prints READY, then one JSON stats line per 100 ms)
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = parseInt(process.argv[2] || '0', 10);
const ROOM = 'bench';
const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ['websocket'],    // the viewers speak engine.io's websocket transport directly
  perMessageDeflate: false,     // the default; said here because it matters for CPU
  maxHttpBufferSize: 1e6,
  serveClient: false,
});

let seq = 0;
let emits = 0;
let viewers = 0;
io.on('connection', (socket) => {
  const role = socket.handshake.query.role;
  if (role === 'viewer') {
    socket.join(ROOM);
    viewers++;
    socket.on('disconnect', () => { viewers--; });
  } else {
    // a gifter: each 'gift' goes to the whole room, one emit per gift
    socket.on('gift', (g) => {
      seq++;
      emits++;
      io.to(ROOM).emit('gift', { seq, ts_ms: Date.now(), type: 'gift', ...g });
    });
  }
});

httpServer.listen(port, '127.0.0.1', () => {
  process.stdout.write('READY ' + httpServer.address().port + '\n');
  setInterval(() => {
    const m = process.memoryUsage();
    process.stdout.write(JSON.stringify({ t: performance.now() / 1000, seq, emits, viewers,
      rss: m.rss, heap: m.heapUsed }) + '\n');
  }, 100);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
