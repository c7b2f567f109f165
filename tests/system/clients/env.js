// What every node client program here reads first: the target, given as JSON in its first
// argument by tests/system/test_client_drivers.py, as the connection settings pg (and
// Prisma's pg adapter) take. TLS without verification: Prism's test certificate is self-signed.
'use strict'

function connectionConfig () {
  const target = JSON.parse(process.argv[2])
  return {
    host: target.host,
    port: target.port,
    user: target.user,
    password: target.password,
    database: target.dbname,
    ssl: target.tls ? { rejectUnauthorized: false } : false
  }
}

module.exports = { connectionConfig }
