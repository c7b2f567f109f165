// Prisma ORM 7 (Rust-free, @prisma/adapter-pg) through Prism: models, a transaction, a raw query
// with parameters, and a server-side error that leaves the client usable. Prisma has no COPY,
// LISTEN or cancel API, so it plays this part of the client-matrix script only.
// Run as `node prisma.js '<target json>'` with NODE_PATH at the cache tools/sysenv/clients.sh
// fills; prints one JSON object.
'use strict'
const { connectionConfig } = require('./env')
const { PrismaClient } = require('@prisma/client')
const { PrismaPg } = require('@prisma/adapter-pg')

async function main () {
  const adapter = new PrismaPg(connectionConfig())
  const prisma = new PrismaClient({ adapter })
  try {
    await prisma.$executeRawUnsafe('CREATE TABLE "Item" (id serial PRIMARY KEY, name text NOT NULL)')
    await prisma.item.create({ data: { name: 'alpha' } })
    await prisma.$transaction([prisma.item.create({ data: { name: 'beta' } })])
    const items = await prisma.item.findMany({ orderBy: { id: 'asc' } })
    const sum = (await prisma.$queryRaw`SELECT ${40}::int + ${2}::int AS v`)[0].v
    let sqlstate = null
    try {
      await prisma.$queryRaw`SELECT 1/0`
    } catch (error) {
      sqlstate = error.meta.driverAdapterError.cause.originalCode
    }
    const after = (await prisma.$queryRaw`SELECT 7::int AS v`)[0].v
    console.log(JSON.stringify({
      items: items.map((item) => item.name),
      sum,
      error_sqlstate: sqlstate,
      after_error: after
    }))
  } finally {
    await prisma.$disconnect()
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
