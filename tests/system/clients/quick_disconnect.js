// node-postgres's quick disconnect: end() right after connect(), without waiting, as a script
// that changes its mind does. pg then writes its Terminate message before the start-up packet
// (before the SSLRequest, with TLS); Postgres reads that as an invalid packet length and closes
// without a word, so the client ends quietly. Run as `node quick_disconnect.js '<target json>'`
// with NODE_PATH at the cache tools/sysenv/clients.sh fills; prints {"ended":true} once end()
// has resolved. There is no error handler, on purpose: as in its users' code, an unexpected
// answer from the server crashes the process with an uncaught error.
'use strict'
const { connectionConfig } = require('./env')
const { Client } = require('pg')

async function main () {
  const client = new Client(connectionConfig())
  client.connect()
  await client.end()
  console.log(JSON.stringify({ ended: true }))
}

main()
