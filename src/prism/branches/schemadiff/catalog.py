"""Reading a branch's schema from its system catalogs, over Prism's own service connection.

No driver and no extra package: the one maintained Python tool for this, migra, is abandoned
and pulls SQLAlchemy and psycopg2 in. Each kind has one query returning ``name, parent,
*fields`` (see ``model.FIELDS``); one more reads ``pg_depend`` (plus the object a comment or a
grant is about) as pairs of those same names, so the DDL can be ordered by what really depends
on what. Objects inherited by partitions or children are left out: they follow their parent.
"""

from __future__ import annotations

from prism.branches.schemadiff.model import Schema, schema_from_rows
from prism.postgres.client import ServiceConnection

# User objects only: no system schemas, no objects that belong to an extension.
_USER_NS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'"
)


def _mine(oid: str) -> str:
    return (
        f"{_USER_NS} AND NOT EXISTS "
        f"(SELECT 1 FROM pg_depend e WHERE e.objid = {oid} AND e.deptype = 'e')"
    )


_REL = "pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
_TABLE = "format('%I.%I', n.nspname, c.relname)"
_FUNCTION = "format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))"
_NL = "E'\\n'"

# Every object a dependency, a comment or a grant can name, with the name the diff uses:
# (classid, objid, objsubid, kind, name, what COMMENT ON calls it).
_OBJECTS = f"""objects(classid, objid, objsubid, kind, name, spec) AS (
 SELECT 'pg_class'::regclass, c.oid, 0,
  CASE WHEN k.oid IS NOT NULL THEN 'constraint' WHEN c.relkind IN ('r', 'p') THEN 'table'
   WHEN c.relkind IN ('v', 'm') THEN 'view' WHEN c.relkind = 'S' THEN 'sequence'
   WHEN c.relkind IN ('i', 'I') THEN 'index' ELSE 'type' END,
  CASE WHEN k.oid IS NOT NULL THEN format('%I.%I.%I', n.nspname, t.relname, k.conname)
   WHEN c.relkind = 'c' THEN format('%I.%I', n.nspname, ct.typname) ELSE {_TABLE} END,
  CASE c.relkind WHEN 'r' THEN 'TABLE ' WHEN 'p' THEN 'TABLE ' WHEN 'v' THEN 'VIEW '
   WHEN 'm' THEN 'MATERIALIZED VIEW ' WHEN 'S' THEN 'SEQUENCE ' WHEN 'c' THEN 'TYPE '
   ELSE 'INDEX ' END || {_TABLE}
 FROM {_REL} LEFT JOIN pg_constraint k ON k.conindid = c.oid AND k.contype IN ('p', 'u', 'x')
  LEFT JOIN pg_class t ON t.oid = k.conrelid LEFT JOIN pg_type ct ON ct.oid = c.reltype
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'i', 'I', 'c') AND {_USER_NS}
 UNION ALL
 SELECT 'pg_class'::regclass, c.oid, a.attnum,
  CASE c.relkind WHEN 'c' THEN 'type' WHEN 'v' THEN 'view' WHEN 'm' THEN 'view' ELSE 'column' END,
  CASE WHEN c.relkind IN ('r', 'p') THEN format('%I.%I.%I', n.nspname, c.relname, a.attname)
   WHEN c.relkind = 'c' THEN format('%I.%I', n.nspname, ct.typname) ELSE {_TABLE} END,
  format('COLUMN %I.%I.%I', n.nspname, c.relname, a.attname)
 FROM pg_attribute a JOIN {_REL} ON c.oid = a.attrelid LEFT JOIN pg_type ct ON ct.oid = c.reltype
 WHERE a.attnum > 0 AND c.relkind IN ('r', 'p', 'v', 'm', 'c') AND {_USER_NS}
 UNION ALL
 SELECT 'pg_attrdef'::regclass, d.oid, 0, 'column',
  format('%I.%I.%I', n.nspname, c.relname, a.attname), NULL
 FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
  JOIN {_REL} ON c.oid = d.adrelid WHERE {_USER_NS}
 UNION ALL
 SELECT 'pg_rewrite'::regclass, r.oid, 0, 'view', {_TABLE}, NULL
 FROM pg_rewrite r JOIN {_REL} ON c.oid = r.ev_class WHERE r.rulename = '_RETURN' AND {_USER_NS}
 UNION ALL
 SELECT 'pg_type'::regclass, x.oid, 0, 'type', format('%I.%I', n.nspname, t.typname),
  CASE t.typtype WHEN 'd' THEN 'DOMAIN ' ELSE 'TYPE ' END
   || format('%I.%I', n.nspname, t.typname)
 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  JOIN pg_type x ON x.oid = t.oid OR x.oid = t.typarray
 WHERE t.typtype IN ('e', 'd', 'c') AND {_USER_NS}
 UNION ALL
 SELECT 'pg_proc'::regclass, p.oid, 0, 'function', {_FUNCTION},
  CASE p.prokind WHEN 'p' THEN 'PROCEDURE ' ELSE 'FUNCTION ' END || {_FUNCTION}
 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_USER_NS}
 UNION ALL
 SELECT 'pg_constraint'::regclass, k.oid, 0,
  CASE WHEN k.contypid <> 0 THEN 'type' ELSE 'constraint' END,
  CASE WHEN k.contypid <> 0 THEN format('%I.%I', n.nspname, t.typname)
   ELSE format('%I.%I.%I', n.nspname, c.relname, k.conname) END,
  CASE WHEN k.contypid = 0 THEN format('CONSTRAINT %I ON %I.%I', k.conname, n.nspname, c.relname)
  END
 FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
  LEFT JOIN pg_class c ON c.oid = k.conrelid LEFT JOIN pg_type t ON t.oid = k.contypid
 WHERE {_USER_NS}
 UNION ALL
 SELECT 'pg_trigger'::regclass, g.oid, 0, 'trigger',
  format('%I.%I.%I', n.nspname, c.relname, g.tgname),
  format('TRIGGER %I ON %I.%I', g.tgname, n.nspname, c.relname)
 FROM pg_trigger g JOIN {_REL} ON c.oid = g.tgrelid WHERE NOT g.tgisinternal AND {_USER_NS}
 UNION ALL
 SELECT 'pg_policy'::regclass, y.oid, 0, 'policy',
  format('%I.%I.%I', n.nspname, c.relname, y.polname),
  format('POLICY %I ON %I.%I', y.polname, n.nspname, c.relname)
 FROM pg_policy y JOIN {_REL} ON c.oid = y.polrelid WHERE {_USER_NS}
 UNION ALL
 SELECT 'pg_namespace'::regclass, n.oid, 0, 'schema', quote_ident(n.nspname),
  'SCHEMA ' || quote_ident(n.nspname)
 FROM pg_namespace n WHERE {_USER_NS} AND n.nspname <> 'public'
 UNION ALL
 SELECT 'pg_extension'::regclass, x.oid, 0, 'extension', quote_ident(x.extname), NULL
 FROM pg_extension x
)"""

# Privileges on relations, one row per grantee (PUBLIC included) other than the owner, whose
# are implicit; a relation never granted anything reads as its kind's default.
_GRANTS = f"""grants(objid, name, privileges) AS (
 SELECT c.oid, format('TABLE %s TO %s', {_TABLE},
   CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END),
  string_agg(g.privilege_type, ', ' ORDER BY g.privilege_type)
 FROM {_REL}, aclexplode(coalesce(c.relacl,
  acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) g
 WHERE g.grantee <> c.relowner AND c.relkind IN ('r', 'p', 'v', 'm', 'S') AND {_mine("c.oid")}
 GROUP BY c.oid, n.nspname, c.relname, g.grantee
)"""

_QUERIES: dict[str, str] = {
    "extension": "SELECT quote_ident(extname), NULL, extversion FROM pg_extension "
    "WHERE extname <> 'plpgsql'",
    "schema": "SELECT quote_ident(n.nspname), NULL FROM pg_namespace n "
    f"WHERE n.nspname <> 'public' AND {_mine('n.oid')}",
    "type": "SELECT format('%I.%I', n.nspname, t.typname), NULL, "
    "CASE t.typtype WHEN 'e' THEN 'ENUM' WHEN 'd' THEN 'DOMAIN' ELSE 'COMPOSITE' END, "
    "CASE t.typtype WHEN 'e' THEN (SELECT string_agg(quote_literal(e.enumlabel), "
    f"{_NL} ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid) "
    "WHEN 'c' THEN (SELECT string_agg(format('%I %s', a.attname, "
    f"format_type(a.atttypid, a.atttypmod)), {_NL} ORDER BY a.attnum) FROM pg_attribute a "
    "WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) "
    "ELSE format_type(t.typbasetype, t.typtypmod) END, t.typdefault, "
    "CASE WHEN t.typnotnull THEN 'NOT NULL' END, "
    "(SELECT string_agg(format('CONSTRAINT %I %s', k.conname, pg_get_constraintdef(k.oid)), "
    f"{_NL} ORDER BY k.conname) FROM pg_constraint k WHERE k.contypid = t.oid "
    "AND k.contype = 'c') "
    "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
    "LEFT JOIN pg_class c ON c.oid = t.typrelid "
    "WHERE (t.typtype IN ('e', 'd') OR (t.typtype = 'c' AND c.relkind = 'c')) "
    f"AND {_mine('t.oid')}",
    "function": f"SELECT {_FUNCTION}, NULL, "
    "CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, "
    "pg_get_function_result(p.oid), pg_get_functiondef(p.oid) "
    "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
    f"WHERE p.prokind IN ('f', 'p') AND {_mine('p.oid')}",
    "sequence": f"SELECT {_TABLE}, NULL, "
    "format_type(s.seqtypid, NULL), s.seqstart::text, s.seqincrement::text, "
    "(SELECT format('%I.%I.%I', tn.nspname, t.relname, a.attname) FROM pg_depend d "
    "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace "
    "JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
    "WHERE d.objid = c.oid AND d.deptype = 'a' LIMIT 1) "
    f"FROM pg_sequence s JOIN {_REL} ON c.oid = s.seqrelid WHERE {_mine('c.oid')} "
    # An identity column's sequence is part of the column.
    "AND NOT EXISTS (SELECT 1 FROM pg_depend i WHERE i.objid = c.oid AND i.deptype = 'i')",
    "table": f"SELECT {_TABLE}, NULL, "
    "'PARTITION BY ' || pg_get_partkeydef(c.oid), "
    "CASE WHEN c.relispartition THEN (SELECT format('PARTITION OF %I.%I ', pn.nspname, "
    "p.relname) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent "
    "JOIN pg_namespace pn ON pn.oid = p.relnamespace WHERE i.inhrelid = c.oid) "
    "|| pg_get_expr(c.relpartbound, c.oid) END, "
    "CASE WHEN c.relrowsecurity THEN 'ENABLE ROW LEVEL SECURITY' END, "
    "CASE WHEN c.relforcerowsecurity THEN 'FORCE ROW LEVEL SECURITY' END "
    f"FROM {_REL} WHERE c.relkind IN ('r', 'p') AND {_mine('c.oid')}",
    "column": "SELECT format('%I.%I.%I', n.nspname, c.relname, a.attname), "
    f"{_TABLE}, format_type(a.atttypid, a.atttypmod), "
    "CASE WHEN a.attnotnull THEN 'NOT NULL' ELSE 'NULL' END, "
    "CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END, "
    "CASE WHEN a.attgenerated = 's' THEN pg_get_expr(d.adbin, d.adrelid) END, "
    "CASE a.attidentity WHEN 'a' THEN 'ALWAYS' WHEN 'd' THEN 'BY DEFAULT' END "
    f"FROM pg_attribute a JOIN {_REL} ON c.oid = a.attrelid "
    "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
    "WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attislocal AND c.relkind IN ('r', 'p') "
    f"AND {_mine('c.oid')} ORDER BY a.attnum",
    "constraint": "SELECT format('%I.%I.%I', n.nspname, c.relname, con.conname), "
    f"{_TABLE}, pg_get_constraintdef(con.oid) FROM pg_constraint con "
    f"JOIN {_REL} ON c.oid = con.conrelid "
    "WHERE con.contype IN ('p', 'u', 'f', 'c', 'x') AND con.conislocal "
    f"AND {_mine('c.oid')}",
    "index": "SELECT format('%I.%I', n.nspname, ic.relname), "
    "format('%I.%I', n.nspname, tc.relname), pg_get_indexdef(i.indexrelid) FROM pg_index i "
    "JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class tc ON tc.oid = i.indrelid "
    "JOIN pg_namespace n ON n.oid = ic.relnamespace WHERE NOT ic.relispartition "
    "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) "
    f"AND {_mine('tc.oid')}",
    "view": f"SELECT {_TABLE}, NULL, "
    "CASE c.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END, "
    f"pg_get_viewdef(c.oid, true) FROM {_REL} WHERE c.relkind IN ('v', 'm') "
    f"AND {_mine('c.oid')}",
    "trigger": "SELECT format('%I.%I.%I', n.nspname, c.relname, g.tgname), "
    f"{_TABLE}, pg_get_triggerdef(g.oid) FROM pg_trigger g JOIN {_REL} ON c.oid = g.tgrelid "
    f"WHERE NOT g.tgisinternal AND g.tgparentid = 0 AND {_mine('c.oid')}",
    "policy": "SELECT format('%I.%I.%I', n.nspname, c.relname, y.polname), "
    f"{_TABLE}, CASE WHEN y.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END, "
    "CASE y.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' "
    "WHEN 'd' THEN 'DELETE' ELSE 'ALL' END, "
    "CASE WHEN y.polroles = '{0}' THEN 'PUBLIC' ELSE (SELECT string_agg(quote_ident(r.rolname), "
    "', ' ORDER BY r.rolname) FROM pg_roles r WHERE r.oid = ANY (y.polroles)) END, "
    "pg_get_expr(y.polqual, y.polrelid), pg_get_expr(y.polwithcheck, y.polrelid) "
    f"FROM pg_policy y JOIN {_REL} ON c.oid = y.polrelid WHERE {_mine('c.oid')}",
    "comment": f"WITH {_OBJECTS} SELECT o.spec, NULL, quote_literal(d.description) "
    "FROM pg_description d JOIN objects o ON (o.classid, o.objid, o.objsubid) = "
    "(d.classoid, d.objoid, d.objsubid) WHERE o.spec IS NOT NULL",
    "grant": f"WITH {_GRANTS} SELECT name, NULL, privileges FROM grants",
    # What the diff cannot script is still shown, so that nobody thinks it is the same.
    "unsupported": "SELECT format('%s %I.%I', CASE c.relkind WHEN 'f' THEN 'FOREIGN TABLE' "
    "END, n.nspname, c.relname), NULL, 'foreign table' "
    f"FROM {_REL} WHERE c.relkind = 'f' AND {_mine('c.oid')} "
    f"UNION ALL SELECT 'AGGREGATE ' || {_FUNCTION}, NULL, 'aggregate' FROM pg_proc p "
    f"JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.prokind = 'a' AND {_mine('p.oid')} "
    "UNION ALL SELECT format('RULE %I ON %I.%I', r.rulename, n.nspname, c.relname), NULL, "
    f"'rule' FROM pg_rewrite r JOIN {_REL} ON c.oid = r.ev_class "
    f"WHERE r.rulename <> '_RETURN' AND {_mine('c.oid')}",
}

_DEPENDS = f"""WITH {_OBJECTS}, {_GRANTS}
SELECT DISTINCT o.kind, o.name, r.kind, r.name FROM pg_depend d
 JOIN objects o ON (o.classid, o.objid, o.objsubid) = (d.classid, d.objid, d.objsubid)
 JOIN objects r ON (r.classid, r.objid) = (d.refclassid, d.refobjid)
  AND r.objsubid IN (0, d.refobjsubid)
 WHERE d.deptype IN ('n', 'a')
UNION
SELECT 'comment', o.spec, o.kind, o.name FROM pg_description d
 JOIN objects o ON (o.classid, o.objid, o.objsubid) = (d.classoid, d.objoid, d.objsubid)
 WHERE o.spec IS NOT NULL
UNION
SELECT 'grant', g.name, o.kind, o.name FROM grants g
 JOIN objects o ON (o.classid, o.objid, o.objsubid) = ('pg_class'::regclass, g.objid, 0)"""


async def read_schema(service: ServiceConnection) -> Schema:
    """Read every user object's definition, and their dependencies, from a branch's catalogs."""
    rows = {kind: await service.query(sql) for kind, sql in _QUERIES.items()}
    return schema_from_rows(rows, await service.query(_DEPENDS))
