// The client-matrix script (tests/clients.py) played by node-postgres, the driver TypeORM uses.
// Run as `node matrix.js '<target json>'` with NODE_PATH at the cache tools/sysenv/clients.sh
// fills; prints one JSON object (a Seen).
'use strict'
const { connectionConfig } = require('./env')
const { Client } = require('pg')
const { from, to } = require('pg-copy-streams')
const { finished } = require('node:stream/promises')

const one = async (client, sql, values) => Object.values((await client.query(sql, values)).rows[0])[0]

async function cancelled (client, config) {
  // pg's Client#cancel sends a CancelRequest with the session's key from a second connection.
  const sleeping = client.query('SELECT pg_sleep(30)')
  await new Promise((resolve) => setTimeout(resolve, 500))
  const fired = performance.now()
  new Client(config).cancel(client, client.activeQuery)
  try {
    await sleeping
    throw new Error('pg_sleep(30) was not cancelled')
  } catch (error) {
    if (error.code !== '57014') throw error
  }
  await one(client, 'SELECT 1')
  return (performance.now() - fired) / 1000
}

async function main () {
  const config = connectionConfig()
  const client = new Client(config)
  await client.connect()
  try {
    const notes = []
    client.on('notification', (note) => notes.push(note))
    const sum = await one(client, 'SELECT $1::int + $2::int', [40, 2])
    const prepared = []
    for (const a of [1, 2, 3]) {
      prepared.push(await one(client, { name: 'matrix_stmt', text: 'SELECT $1::int * 10', values: [a] }))
    }
    const onServer = await one(client, 'SELECT count(*) > 0 FROM pg_prepared_statements')
    await client.query('CREATE TEMP TABLE copied (t text)')
    const copyIn = client.query(from('COPY copied FROM STDIN'))
    copyIn.end('alpha\nbeta\n')
    await finished(copyIn)
    const chunks = []
    const copyOut = client.query(to('COPY copied TO STDOUT'))
    copyOut.on('data', (chunk) => chunks.push(chunk))
    await finished(copyOut)
    await client.query('LISTEN prism_matrix')
    await client.query("NOTIFY prism_matrix, 'hello'")
    const within = await cancelled(client, config)
    let sqlstate = null
    try {
      await client.query('SELECT 1/0')
    } catch (error) {
      sqlstate = error.code
    }
    const seen = {
      tls: client.connection.stream.encrypted === true,
      sum,
      prepared,
      prepared_on_server: onServer,
      copied: Buffer.concat(chunks).toString().split('\n').filter(Boolean),
      notification: notes[0].payload,
      notified_by_own_pid: notes[0].processId === client.processID,
      cancelled_within: within,
      error_sqlstate: sqlstate,
      after_error: await one(client, 'SELECT 7')
    }
    console.log(JSON.stringify(seen))
  } finally {
    await client.end()
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
