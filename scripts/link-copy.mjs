// A file copy between two test hosts over mutual TLS with the hosts' own certificates, as `scp` would do between
// two servers: the copy step of Podman's own cold migration (checkpoint --export, copy, restore --import) that
// scripts/bench-live.ts measures as the baseline. Plain Node (no build step), run inside the hosts:
//
//   node link-copy.mjs recv ADDRESS:PORT FILE PKI_DIR NAME PEER   # prints "listening", then "received BYTES"
//   node link-copy.mjs send ADDRESS:PORT FILE PKI_DIR NAME PEER   # prints "sent BYTES" once the peer has it all
//
// One connection, from the named peer only (its certificate's CN, signed by PKI_DIR/ca.pem); the receiver writes
// FILE (created, never followed if it is a symlink) and closes the connection once the file is complete.
import { constants, createReadStream, createWriteStream, readFileSync } from 'node:fs';
import tls from 'node:tls';

const [mode, endpoint, file, pki, name, peer] = process.argv.slice(2);
if (!['send', 'recv'].includes(mode) || !peer) {
  console.error('usage: link-copy.mjs send|recv ADDRESS:PORT FILE PKI_DIR NAME PEER');
  process.exit(2);
}
const [host, port] = [
  endpoint.slice(0, endpoint.lastIndexOf(':')),
  Number(endpoint.slice(endpoint.lastIndexOf(':') + 1)),
];
const id = {
  ca: readFileSync(`${pki}/ca.pem`),
  cert: readFileSync(`${pki}/${name}.pem`),
  key: readFileSync(`${pki}/${name}-key.pem`),
};
const fail = (msg) => {
  console.error(`link-copy: ${msg}`);
  process.exit(1);
};

if (mode === 'recv') {
  const server = tls.createServer({ ...id, requestCert: true, rejectUnauthorized: true }, (socket) => {
    const cn = socket.getPeerCertificate().subject?.CN;
    if (cn !== peer) {
      socket.destroy();
      fail(`refused a connection from ${cn}, expected ${peer}`);
    }
    server.close();
    const out = createWriteStream(file, {
      flags: constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW,
    });
    let bytes = 0;
    socket.on('data', (d) => (bytes += d.length));
    socket.pipe(out);
    out.on('finish', () => {
      console.log(`received ${bytes}`);
      socket.end();
    });
    out.on('error', (e) => fail(e.message));
    socket.on('error', (e) => fail(e.message));
  });
  server.listen(port, host, () => console.log('listening'));
} else {
  const socket = tls.connect({
    ...id,
    host,
    port,
    servername: peer,
    checkServerIdentity: (_h, cert) =>
      cert.subject?.CN === peer ? undefined : new Error(`the peer is ${cert.subject?.CN}, expected ${peer}`),
  });
  let bytes = 0;
  socket.on('secureConnect', () => {
    const input = createReadStream(file, { highWaterMark: 1 << 20 });
    input.on('data', (d) => (bytes += d.length));
    input.pipe(socket, { end: true });
    input.on('error', (e) => fail(e.message));
  });
  socket.on('error', (e) => fail(e.message));
  // The receiver closes once the file is complete on its disk.
  socket.on('close', () => console.log(`sent ${bytes}`));
}
