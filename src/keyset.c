/*
 * keyset.c — keyset pagination: apicore.keyset_page.
 *
 * Owns turning (relation, order_by, cursor, page_size, filter) into one
 * parameterised query run with the caller's privileges and row-level
 * security, and the page envelope {"data", "has_more", "next_cursor",
 * "prev_cursor"}.  order_by is parsed here, never interpolated: each column
 * is looked up in the catalog and quoted, each comparison uses the column
 * type's default btree operators by their qualified names.  The sort is made
 * unique by appending the primary key.  Cursors (cursor.c) hold the sort key
 * of the row a page ends at and are bound to (relation, order_by, filter).
 *
 * The "after this row" condition is a row comparison over the longest prefix
 * of sort columns that share a direction and cannot be NULL, which a btree
 * index uses as its start key; the rest is the expanded OR form, which only
 * filters rows that tie on that prefix.  So page 10,000 starts where it
 * should instead of counting the rows before it.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "catalog/objectaddress.h"
#include "catalog/pg_index.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "parser/scansup.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "apicore.h"
#include "cursor.h"

PG_FUNCTION_INFO_V1(apicore_keyset_page);
PG_FUNCTION_INFO_V1(apicore_keyset_page_explain);

#define KEYSET_MAX_KEYS		INDEX_MAX_KEYS
#define KEYSET_MAX_PARAMS	(2 * 1600 + KEYSET_MAX_KEYS)
#define KEYSET_MAX_PLANS	256

static int	default_page_size = 20;
static int	max_page_size = 100;

/* One column of the (unique) sort. */
typedef struct SortKey
{
	AttrNumber	attnum;
	const char *name;			/* as in the catalog */
	Oid			type;
	int32		typmod;
	bool		desc;
	bool		nulls_first;
	bool		notnull;
	Oid			lt_opr;
	Oid			gt_opr;
	Oid			eq_opr;
} SortKey;

/* Everything one call needs to build and run its query. */
typedef struct PageQuery
{
	Oid			relid;
	int			nkeys;
	SortKey		keys[KEYSET_MAX_KEYS];
	StringInfoData where;		/* filter conditions, each starting " AND " */
	StringInfoData context;		/* what the cursors are bound to */
	int			limit;
	int			nparams;
	Oid			param_types[KEYSET_MAX_PARAMS];
	Datum		params[KEYSET_MAX_PARAMS];
	char		param_nulls[KEYSET_MAX_PARAMS];
} PageQuery;

/* A prepared query, kept for the backend's lifetime. */
typedef struct KeysetPlan
{
	uint64		hash;			/* hash key: of the query text */
	char	   *sql;
	int			nparams;
	Oid		   *param_types;
	SPIPlanPtr	plan;
} KeysetPlan;

static HTAB *plan_cache = NULL;

void
KeysetInit(void)
{
	DefineCustomIntVariable("apicore.default_page_size",
							"Rows per keyset_page when page_size is NULL.",
							NULL, &default_page_size, 20, 1, 100000,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("apicore.max_page_size",
							"Largest page keyset_page returns; larger page_size values are capped.",
							NULL, &max_page_size, 100, 1, 100000,
							PGC_USERSET, 0, NULL, NULL, NULL);
}

/* ---- parsing order_by ---- */

static void
OrderBySyntaxError(const char *order_by, const char *at, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_SYNTAX_ERROR),
			 errmsg("order_by: %s at position %d of \"%s\"", what,
					(int) (at - order_by) + 1, order_by),
			 errhint("Write order_by as comma-separated column [ASC|DESC] [NULLS FIRST|LAST], e.g. 'created_at DESC, id DESC'.")));
}

static bool
IsIdentStart(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}

static bool
IsIdentChar(unsigned char c)
{
	return IsIdentStart(c) || (c >= '0' && c <= '9') || c == '$';
}

/*
 * Read one identifier at *pos: "quoted" (with "" for a quote) as written,
 * unquoted folded to lower case as SQL does.  NULL if there is none.
 */
static char *
ReadIdentifier(const char *order_by, const char **pos, bool *quoted)
{
	const char *p = *pos;
	StringInfoData ident;

	*quoted = (*p == '"');
	if (!*quoted && !IsIdentStart((unsigned char) *p))
		return NULL;
	initStringInfo(&ident);
	if (*quoted)
	{
		for (p++;; p++)
		{
			if (*p == '\0')
				OrderBySyntaxError(order_by, *pos, "unterminated quoted identifier");
			if (*p == '"' && p[1] != '"')
				break;
			if (*p == '"')
				p++;
			appendStringInfoChar(&ident, *p);
		}
		p++;
		if (ident.len == 0)
			OrderBySyntaxError(order_by, *pos, "empty quoted identifier");
	}
	else
	{
		while (IsIdentChar((unsigned char) *p))
			p++;
		appendBinaryStringInfo(&ident, *pos, p - *pos);
		ident.data = downcase_truncate_identifier(ident.data, ident.len, false);
	}
	*pos = p;
	return ident.data;
}

static void
SkipSpaces(const char **pos)
{
	while (**pos == ' ' || **pos == '\t' || **pos == '\n' || **pos == '\r')
		(*pos)++;
}

/* Consume keyword `word` (unquoted, any case) if it comes next. */
static bool
ReadKeyword(const char **pos, const char *word)
{
	size_t		len = strlen(word);

	SkipSpaces(pos);
	if (pg_strncasecmp(*pos, word, len) != 0 || IsIdentChar((unsigned char) (*pos)[len]))
		return false;
	*pos += len;
	return true;
}

static void
LookupColumn(PageQuery *q, SortKey *key, const char *name, const char *argument)
{
	TypeCacheEntry *tc;
	HeapTuple	tup;
	Form_pg_attribute att;

	tup = SearchSysCacheAttName(q->relid, name);
	if (!HeapTupleIsValid(tup) || ((Form_pg_attribute) GETSTRUCT(tup))->attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("%s: column \"%s\" of relation %s does not exist",
						argument, name, get_rel_name(q->relid)),
				 errhint("Name columns of the relation; quote mixed-case names with double quotes.")));
	att = (Form_pg_attribute) GETSTRUCT(tup);
	key->attnum = att->attnum;
	key->name = pstrdup(NameStr(att->attname));
	key->type = att->atttypid;
	key->typmod = att->atttypmod;
	key->notnull = att->attnotnull;
	ReleaseSysCache(tup);

	tc = lookup_type_cache(key->type, TYPECACHE_LT_OPR | TYPECACHE_GT_OPR | TYPECACHE_EQ_OPR);
	if (!OidIsValid(tc->lt_opr) || !OidIsValid(tc->gt_opr) || !OidIsValid(tc->eq_opr))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("%s: column \"%s\" has type %s, which has no default ordering",
						argument, name, format_type_be(key->type)),
				 errhint("Sort by columns whose type has a default btree operator class.")));
	key->lt_opr = tc->lt_opr;
	key->gt_opr = tc->gt_opr;
	key->eq_opr = tc->eq_opr;
}

static SortKey *
AddSortKey(PageQuery *q, const char *order_by, const char *at)
{
	if (q->nkeys >= KEYSET_MAX_KEYS)
		OrderBySyntaxError(order_by, at, psprintf("more than %d columns", KEYSET_MAX_KEYS));
	return &q->keys[q->nkeys++];
}

static void
CheckDuplicateKey(PageQuery *q, const char *order_by, const char *at)
{
	for (int i = 0; i < q->nkeys - 1; i++)
		if (q->keys[i].attnum == q->keys[q->nkeys - 1].attnum)
			OrderBySyntaxError(order_by, at, "column named twice");
}

static void
ParseOrderBy(PageQuery *q, const char *order_by)
{
	const char *p = order_by;

	for (;;)
	{
		const char *start;
		bool		quoted;
		char	   *name;
		SortKey    *key;

		SkipSpaces(&p);
		start = p;
		name = ReadIdentifier(order_by, &p, &quoted);
		if (name == NULL)
			OrderBySyntaxError(order_by, p, *p ? "expected a column name" : "expected a column name, found the end");
		key = AddSortKey(q, order_by, start);
		LookupColumn(q, key, name, "order_by");
		CheckDuplicateKey(q, order_by, start);
		key->desc = ReadKeyword(&p, "desc");
		if (!key->desc)
			(void) ReadKeyword(&p, "asc");
		key->nulls_first = key->desc;	/* PostgreSQL's default */
		if (ReadKeyword(&p, "nulls"))
		{
			if (ReadKeyword(&p, "first"))
				key->nulls_first = true;
			else if (ReadKeyword(&p, "last"))
				key->nulls_first = false;
			else
				OrderBySyntaxError(order_by, p, "expected FIRST or LAST after NULLS");
		}
		SkipSpaces(&p);
		if (*p == '\0')
			return;
		if (*p != ',')
			OrderBySyntaxError(order_by, p, "expected a comma, ASC, DESC or NULLS");
		p++;
	}
}

/* ---- making the sort unique ---- */

static bool
SortHasColumn(PageQuery *q, AttrNumber attnum)
{
	for (int i = 0; i < q->nkeys; i++)
		if (q->keys[i].attnum == attnum)
			return true;
	return false;
}

static bool
AttNotNull(Oid relid, AttrNumber attnum)
{
	HeapTuple	tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(attnum));
	bool		notnull;

	if (!HeapTupleIsValid(tup))
		return false;
	notnull = ((Form_pg_attribute) GETSTRUCT(tup))->attnotnull;
	ReleaseSysCache(tup);
	return notnull;
}

/* Does a plain unique index on NOT NULL columns sit inside the sort? */
static bool
IndexMakesSortUnique(PageQuery *q, Oid indexoid)
{
	HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(indexoid));
	Form_pg_index index;
	bool		unique;

	if (!HeapTupleIsValid(tup))
		return false;
	index = (Form_pg_index) GETSTRUCT(tup);
	unique = index->indisunique && index->indisvalid &&
		heap_attisnull(tup, Anum_pg_index_indexprs, NULL) &&
		heap_attisnull(tup, Anum_pg_index_indpred, NULL);
	for (int i = 0; unique && i < index->indnkeyatts; i++)
	{
		AttrNumber	attnum = index->indkey.values[i];

		unique = SortHasColumn(q, attnum) &&
			(index->indisprimary || index->indnullsnotdistinct ||
			 AttNotNull(q->relid, attnum));
	}
	ReleaseSysCache(tup);
	return unique;
}

/* Append the primary key's columns the sort lacks, in the last key's direction. */
static void
AppendPrimaryKey(PageQuery *q, Oid pkoid, const char *order_by)
{
	HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pkoid));
	Form_pg_index index = (Form_pg_index) GETSTRUCT(tup);
	bool		desc = q->keys[q->nkeys - 1].desc;

	for (int i = 0; i < index->indnkeyatts; i++)
	{
		AttrNumber	attnum = index->indkey.values[i];
		SortKey    *key;

		if (SortHasColumn(q, attnum))
			continue;
		key = AddSortKey(q, order_by, order_by + strlen(order_by));
		LookupColumn(q, key, get_attname(q->relid, attnum, false), "order_by");
		key->desc = desc;
		key->nulls_first = desc;
	}
	ReleaseSysCache(tup);
}

static void
MakeSortUnique(PageQuery *q, const char *order_by)
{
	Relation	rel = relation_open(q->relid, AccessShareLock);
	List	   *indexes = RelationGetIndexList(rel);
	Oid			pkoid = rel->rd_pkindex;
	ListCell   *lc;

	relation_close(rel, NoLock);
	foreach(lc, indexes)
		if (IndexMakesSortUnique(q, lfirst_oid(lc)))
			return;
	if (!OidIsValid(pkoid))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_COLUMN_REFERENCE),
				 errmsg("order_by: \"%s\" is not unique and relation %s has no primary key",
						order_by, get_rel_name(q->relid)),
				 errhint("Add a primary key to the relation, or end order_by with columns of a unique index that are NOT NULL.")));
	AppendPrimaryKey(q, pkoid, order_by);
}

/* ---- query text ---- */

static int
AddParam(PageQuery *q, Oid type, Datum value, bool isnull)
{
	if (q->nparams >= KEYSET_MAX_PARAMS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("filter has too many values"),
				 errhint("Filter on fewer values.")));
	q->param_types[q->nparams] = type;
	q->params[q->nparams] = value;
	q->param_nulls[q->nparams] = isnull ? 'n' : ' ';
	return ++q->nparams;
}

static Oid
OperatorNamespace(Oid opr)
{
	HeapTuple	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opr));
	Oid			nsp;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", opr);
	nsp = ((Form_pg_operator) GETSTRUCT(tup))->oprnamespace;
	ReleaseSysCache(tup);
	return nsp;
}

/* OPERATOR(schema.op): immune to search_path */
static void
AppendOperator(StringInfo sql, Oid opr)
{
	HeapTuple	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opr));
	Form_pg_operator form;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", opr);
	form = (Form_pg_operator) GETSTRUCT(tup);
	appendStringInfo(sql, " OPERATOR(%s.%s) ",
					 quote_identifier(get_namespace_name(form->oprnamespace)),
					 NameStr(form->oprname));
	ReleaseSysCache(tup);
}

static void
AppendColumn(StringInfo sql, const SortKey *key)
{
	appendStringInfo(sql, "p.%s", quote_identifier(key->name));
}

/* ---- the filter ---- */

static void
FilterError(const char *column, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("filter: %s%s%s", column ? "value for \"" : "", column ? column : "",
					column ? psprintf("\" %s", what) : what),
			 errhint("Pass filter as a JSON object of column: value, e.g. {\"status\": \"paid\", \"tenant_id\": [1, 2]}.")));
}

/* A scalar JSON value as text for its column type's input function. */
static char *
ScalarText(const char *column, JsonbValue *v)
{
	switch (v->type)
	{
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return v->val.boolean ? "true" : "false";
		default:
			FilterError(column, "must be a string, number, boolean, null or an array of them");
	}
	return NULL;
}

static Datum
InputValue(const SortKey *col, const char *text)
{
	Oid			input;
	Oid			ioparam;

	getTypeInputInfo(col->type, &input, &ioparam);
	return OidInputFunctionCall(input, (char *) text, ioparam, col->typmod);
}

/* column = ANY (array of the column's type) */
static void
AddFilterArray(PageQuery *q, const SortKey *col, JsonbValue *array)
{
	JsonbIterator *it = JsonbIteratorInit(array->val.binary.data);
	JsonbValue	v;
	JsonbIteratorToken tok;
	ArrayBuildState *acc = initArrayResult(col->type, CurrentMemoryContext, false);
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(col->type, &typlen, &typbyval, &typalign);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_BEGIN_OBJECT || (tok == WJB_ELEM && v.type == jbvBinary))
			FilterError(col->name, "must be an array of scalars");
		if (tok != WJB_ELEM)
			continue;
		if (v.type == jbvNull)
			accumArrayResult(acc, (Datum) 0, true, col->type, CurrentMemoryContext);
		else
			accumArrayResult(acc, InputValue(col, ScalarText(col->name, &v)), false,
							 col->type, CurrentMemoryContext);
	}
	appendStringInfoString(&q->where, " AND ");
	AppendColumn(&q->where, col);
	AppendOperator(&q->where, col->eq_opr);
	appendStringInfo(&q->where, "ANY ($%d)",
					 AddParam(q, get_array_type(col->type),
							  makeArrayResult(acc, CurrentMemoryContext), false));
}

static void
AddFilterValue(PageQuery *q, const SortKey *col, JsonbValue *v)
{
	if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
		return AddFilterArray(q, col, v);
	appendStringInfoString(&q->where, " AND ");
	AppendColumn(&q->where, col);
	if (v->type == jbvNull)
	{
		appendStringInfoString(&q->where, " IS NULL");
		return;
	}
	if (v->type == jbvBinary)
		FilterError(col->name, "must be a string, number, boolean, null or an array of them");
	AppendOperator(&q->where, col->eq_opr);
	appendStringInfo(&q->where, "$%d",
					 AddParam(q, col->type, InputValue(col, ScalarText(col->name, v)), false));
}

static void
ParseFilter(PageQuery *q, Jsonb *filter)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	SortKey		col;

	if (!JB_ROOT_IS_OBJECT(filter) || JB_ROOT_IS_SCALAR(filter))
		FilterError(NULL, "must be a JSON object");
	it = JsonbIteratorInit(&filter->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok != WJB_KEY)
			continue;
		LookupColumn(q, &col, pnstrdup(v.val.string.val, v.val.string.len), "filter");
		tok = JsonbIteratorNext(&it, &v, true);
		AddFilterValue(q, &col, &v);
	}
	appendStringInfo(&q->context, "|%s", JsonbToCString(NULL, &filter->root, VARSIZE(filter)));
}

/* ---- the keyset condition ---- */

/* Direction of travel: going backwards flips every column's order. */
static bool
KeyDesc(const SortKey *key, bool backward)
{
	return key->desc != backward;
}

static bool
KeyNullsFirst(const SortKey *key, bool backward)
{
	return key->nulls_first != backward;
}

/* Can this column join a row comparison (no NULL can come after the position)? */
static bool
RowComparable(const SortKey *key, bool backward, bool value_null)
{
	return !value_null && (key->notnull || KeyNullsFirst(key, backward));
}

/* Rows strictly after value in column key's travel order; false if none can be. */
static bool
AppendAfter(StringInfo sql, const SortKey *key, bool backward, bool value_null, int param)
{
	bool		nulls_first = KeyNullsFirst(key, backward);

	if (value_null)
	{
		if (!nulls_first)
			return false;
		AppendColumn(sql, key);
		appendStringInfoString(sql, " IS NOT NULL");
		return true;
	}
	appendStringInfoChar(sql, '(');
	AppendColumn(sql, key);
	AppendOperator(sql, KeyDesc(key, backward) ? key->lt_opr : key->gt_opr);
	appendStringInfo(sql, "$%d", param);
	if (!nulls_first && !key->notnull)
	{
		appendStringInfoString(sql, " OR ");
		AppendColumn(sql, key);
		appendStringInfoString(sql, " IS NULL");
	}
	appendStringInfoChar(sql, ')');
	return true;
}

static void
AppendEqual(StringInfo sql, const SortKey *key, bool value_null, int param)
{
	AppendColumn(sql, key);
	if (value_null)
		appendStringInfoString(sql, " IS NULL");
	else
	{
		AppendOperator(sql, key->eq_opr);
		appendStringInfo(sql, "$%d", param);
	}
}

/* OR over i of (keys before i equal AND key i after): exact, not indexable. */
static void
AppendExpandedAfter(StringInfo sql, PageQuery *q, bool backward,
					const bool *nulls, const int *params)
{
	bool		any = false;

	appendStringInfoString(sql, " AND (");
	for (int i = 0; i < q->nkeys; i++)
	{
		StringInfoData term;

		initStringInfo(&term);
		for (int j = 0; j < i; j++)
		{
			AppendEqual(&term, &q->keys[j], nulls[j], params[j]);
			appendStringInfoString(&term, " AND ");
		}
		if (!AppendAfter(&term, &q->keys[i], backward, nulls[i], params[i]))
			continue;
		appendStringInfo(sql, "%s(%s)", any ? " OR " : "", term.data);
		any = true;
	}
	appendStringInfoString(sql, any ? ")" : "false)");
}

static Oid
KeyAfterOpr(const SortKey *key, bool backward)
{
	return KeyDesc(key, backward) ? key->lt_opr : key->gt_opr;
}

/*
 * How many leading columns one row comparison can cover: same direction, no
 * NULL after the position, and operators that ROW() OPERATOR(nsp.<) ROW()
 * finds by name for every column.
 */
static int
RowComparablePrefix(PageQuery *q, bool backward, const bool *nulls)
{
	bool		desc = KeyDesc(&q->keys[0], backward);
	Oid			nsp = OperatorNamespace(KeyAfterOpr(&q->keys[0], backward));
	int			n = 0;

	while (n < q->nkeys && RowComparable(&q->keys[n], backward, nulls[n]) &&
		   KeyDesc(&q->keys[n], backward) == desc)
	{
		Oid			opr = KeyAfterOpr(&q->keys[n], backward);

		if (OperatorNamespace(opr) != nsp || strcmp(get_opname(opr), desc ? "<" : ">") != 0)
			break;
		n++;
	}
	return n;
}

/*
 * ROW(prefix) > ROW(values) (>= when columns remain), which an index on the
 * sort columns uses to start its scan.
 */
static void
AppendRowBound(StringInfo sql, PageQuery *q, int prefix, bool backward,
			   bool exact, const int *params)
{
	bool		desc = KeyDesc(&q->keys[0], backward);

	appendStringInfoString(sql, " AND ROW(");
	for (int i = 0; i < prefix; i++)
	{
		if (i > 0)
			appendStringInfoString(sql, ", ");
		AppendColumn(sql, &q->keys[i]);
	}
	appendStringInfo(sql, ") OPERATOR(%s.%s%s) ROW(",
					 quote_identifier(get_namespace_name(OperatorNamespace(KeyAfterOpr(&q->keys[0], backward)))),
					 desc ? "<" : ">", exact ? "" : "=");
	for (int i = 0; i < prefix; i++)
		appendStringInfo(sql, "%s$%d", i > 0 ? ", " : "", params[i]);
	appendStringInfoChar(sql, ')');
}

static void
AppendKeysetCondition(StringInfo sql, PageQuery *q, bool backward,
					  const Datum *values, const bool *nulls)
{
	int			params[KEYSET_MAX_KEYS];
	int			prefix;

	for (int i = 0; i < q->nkeys; i++)
		params[i] = nulls[i] ? 0 : AddParam(q, q->keys[i].type, values[i], false);
	prefix = RowComparablePrefix(q, backward, nulls);
	if (prefix > 0)
		AppendRowBound(sql, q, prefix, backward, prefix == q->nkeys, params);
	else if (nulls[0] && !KeyNullsFirst(&q->keys[0], backward))
	{
		/* NULLs come last and we are among them: only NULLs remain */
		appendStringInfoString(sql, " AND ");
		AppendEqual(sql, &q->keys[0], true, 0);
	}
	if (prefix < q->nkeys)
		AppendExpandedAfter(sql, q, backward, nulls, params);
}

/* ---- running the query ---- */

static void
AppendOrderBy(StringInfo sql, PageQuery *q, bool backward)
{
	appendStringInfoString(sql, " ORDER BY ");
	for (int i = 0; i < q->nkeys; i++)
	{
		if (i > 0)
			appendStringInfoString(sql, ", ");
		AppendColumn(sql, &q->keys[i]);
		appendStringInfo(sql, " %s NULLS %s",
						 KeyDesc(&q->keys[i], backward) ? "DESC" : "ASC",
						 KeyNullsFirst(&q->keys[i], backward) ? "FIRST" : "LAST");
	}
}

/*
 * The limit is written into the text, so that the plan cache can settle on
 * one generic plan per page size instead of planning every call.
 */
static char *
BuildQuery(PageQuery *q, bool backward, const Datum *position, const bool *position_nulls)
{
	StringInfoData sql;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT pg_catalog.to_jsonb(p.*)");
	for (int i = 0; i < q->nkeys; i++)
	{
		appendStringInfoString(&sql, ", ");
		AppendColumn(&sql, &q->keys[i]);
	}
	appendStringInfo(&sql, " FROM %s p WHERE true%s",
					 quote_qualified_identifier(get_namespace_name(get_rel_namespace(q->relid)),
												get_rel_name(q->relid)),
					 q->where.data);
	if (position != NULL)
		AppendKeysetCondition(&sql, q, backward, position, position_nulls);
	AppendOrderBy(&sql, q, backward);
	appendStringInfo(&sql, " LIMIT %d", q->limit);
	return sql.data;
}

static void
ForgetPlan(KeysetPlan *entry)
{
	SPI_freeplan(entry->plan);
	pfree(entry->sql);
	pfree(entry->param_types);
}

/*
 * The query's plan, prepared once per backend and query text (which names
 * the relation, columns, filter columns and where the position has NULLs).
 * The plan cache replans on DDL and when the role or RLS changes.
 */
static SPIPlanPtr
PreparedPlan(const char *sql, int nparams, Oid *param_types)
{
	uint64		hash = hash_bytes_extended((const unsigned char *) sql, strlen(sql), 0);
	KeysetPlan *entry;
	SPIPlanPtr	plan;

	if (plan_cache == NULL)
		plan_cache = ApicoreBackendHash("apicore keyset plans", sizeof(uint64), sizeof(KeysetPlan));
	entry = hash_search(plan_cache, &hash, HASH_FIND, NULL);
	if (entry != NULL && strcmp(entry->sql, sql) == 0 && entry->nparams == nparams &&
		memcmp(entry->param_types, param_types, sizeof(Oid) * nparams) == 0)
		return entry->plan;

	plan = SPI_prepare(sql, nparams, param_types);
	if (plan == NULL)
		elog(ERROR, "apicore: keyset_page could not prepare its query: %s",
			 SPI_result_code_string(SPI_result));
	if (entry != NULL)
		ForgetPlan(entry);
	else if (hash_get_num_entries(plan_cache) >= KEYSET_MAX_PLANS)
		return plan;			/* a one-off, freed with this call's SPI memory */
	else
		entry = hash_search(plan_cache, &hash, HASH_ENTER, NULL);
	SPI_keepplan(plan);
	entry->plan = plan;
	entry->sql = MemoryContextStrdup(TopMemoryContext, sql);
	entry->nparams = nparams;
	entry->param_types = MemoryContextAlloc(TopMemoryContext, sizeof(Oid) * Max(nparams, 1));
	memcpy(entry->param_types, param_types, sizeof(Oid) * nparams);
	return plan;
}

/* ---- the page envelope ---- */

/* The cursor of one result row: (before?, sort key values...). */
static text *
RowCursor(PageQuery *q, int row, bool before)
{
	HeapTuple	tup = SPI_tuptable->vals[row];
	Oid			types[KEYSET_MAX_KEYS + 1] = {BOOLOID};
	Datum		values[KEYSET_MAX_KEYS + 1] = {BoolGetDatum(before)};
	bool		nulls[KEYSET_MAX_KEYS + 1] = {false};

	for (int i = 0; i < q->nkeys; i++)
	{
		types[i + 1] = q->keys[i].type;
		values[i + 1] = SPI_getbinval(tup, SPI_tuptable->tupdesc, i + 2, &nulls[i + 1]);
	}
	return CursorEncodeValues(q->nkeys + 1, types, values, nulls,
							  q->context.data, q->context.len, 0);
}

static void
PushKey(JsonbParseState **state, const char *key)
{
	JsonbValue	v = {.type = jbvString};

	v.val.string.val = (char *) key;
	v.val.string.len = strlen(key);
	pushJsonbValue(state, WJB_KEY, &v);
}

static void
PushCursor(JsonbParseState **state, const char *key, text *cursor)
{
	JsonbValue	v = {.type = cursor ? jbvString : jbvNull};

	if (cursor != NULL)
	{
		v.val.string.val = VARDATA(cursor);
		v.val.string.len = VARSIZE(cursor) - VARHDRSZ;
	}
	PushKey(state, key);
	pushJsonbValue(state, WJB_VALUE, &v);
}

static void
PushRows(JsonbParseState **state, int nrows, bool backward)
{
	PushKey(state, "data");
	pushJsonbValue(state, WJB_BEGIN_ARRAY, NULL);
	for (int i = 0; i < nrows; i++)
	{
		int			row = backward ? nrows - 1 - i : i;
		bool		isnull;
		Jsonb	   *json = DatumGetJsonbP(SPI_getbinval(SPI_tuptable->vals[row],
														 SPI_tuptable->tupdesc, 1, &isnull));
		JsonbValue	v = {.type = jbvBinary};

		v.val.binary.data = &json->root;
		v.val.binary.len = VARSIZE(json) - VARHDRSZ;
		pushJsonbValue(state, WJB_ELEM, &v);
	}
	pushJsonbValue(state, WJB_END_ARRAY, NULL);
}

/*
 * {"data", "has_more", "next_cursor", "prev_cursor"} from the fetched rows.
 * has_more: a row beyond the page exists in the direction travelled
 * (forward from a next_cursor or the start, backward from a prev_cursor).
 */
static Jsonb *
BuildEnvelope(PageQuery *q, int page_size, bool has_position, bool backward)
{
	int			nrows = (int) Min(SPI_processed, (uint64) page_size);
	bool		has_more = SPI_processed > (uint64) page_size;
	int			first = backward ? nrows - 1 : 0;	/* in page order */
	int			last = backward ? 0 : nrows - 1;
	text	   *next = NULL;
	text	   *prev = NULL;
	JsonbParseState *state = NULL;
	JsonbValue	more = {.type = jbvBool};

	if (nrows > 0 && (backward ? true : has_more))
		next = RowCursor(q, last, false);
	if (nrows > 0 && (backward ? has_more : has_position))
		prev = RowCursor(q, first, true);
	more.val.boolean = has_more;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	PushRows(&state, nrows, backward);
	PushKey(&state, "has_more");
	pushJsonbValue(&state, WJB_VALUE, &more);
	PushCursor(&state, "next_cursor", next);
	PushCursor(&state, "prev_cursor", prev);
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}

/* ---- keyset_page ---- */

static void
RequireArgument(FunctionCallInfo fcinfo, int arg, const char *name, const char *hint)
{
	ApicoreRequireArg(fcinfo, arg, "keyset_page: ", name, hint);
}

static int
PageSize(FunctionCallInfo fcinfo)
{
	int			page_size = PG_ARGISNULL(3) ? default_page_size : PG_GETARG_INT32(3);

	if (page_size <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("keyset_page: page_size must be positive, got %d", page_size),
				 errhint("Pass NULL for apicore.default_page_size (%d), or 1 to apicore.max_page_size (%d).",
						 default_page_size, max_page_size)));
	return Min(page_size, max_page_size);
}

/*
 * The relation exists, is pageable, and the caller may read all of it (the
 * query selects p.*): checked before anything locks it or looks at its
 * columns and indexes, with the same error the query would raise.
 */
static void
CheckRelation(Oid relid)
{
	char		kind = get_rel_relkind(relid);
	Oid			user = GetUserId();

	if (kind == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("keyset_page: relation with OID %u does not exist", relid),
				 errhint("Pass the table to page by name, e.g. 'orders'.")));
	if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE &&
		kind != RELKIND_MATVIEW && kind != RELKIND_FOREIGN_TABLE && kind != RELKIND_VIEW)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("keyset_page: relation \"%s\" is not a table or view", get_rel_name(relid)),
				 errhint("Page a table, partitioned table, materialized view or foreign table.")));
	if (pg_class_aclcheck(relid, user, ACL_SELECT) != ACLCHECK_OK &&
		pg_attribute_aclcheck_all(relid, user, ACL_SELECT, ACLMASK_ALL) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, get_relkind_objtype(kind), get_rel_name(relid));
}

static void
InitContext(PageQuery *q)
{
	/*
	 * Names, not OIDs or attribute numbers, so that a page cursor survives
	 * pg_dump/pg_restore; quoted, so that the encoding is unambiguous.
	 */
	initStringInfo(&q->context);
	appendStringInfo(&q->context, "apicore.keyset_page|%s|",
					 quote_qualified_identifier(get_namespace_name(get_rel_namespace(q->relid)),
												get_rel_name(q->relid)));
	for (int i = 0; i < q->nkeys; i++)
		appendStringInfo(&q->context, "%s %c%c,", quote_identifier(q->keys[i].name),
						 q->keys[i].desc ? 'd' : 'a', q->keys[i].nulls_first ? 'f' : 'l');
}

/* The page cursor's (before?, sort key) values; sets *backward. */
static void
DecodePosition(PageQuery *q, text *cursor, Datum *position, bool *nulls, bool *backward)
{
	Oid			types[KEYSET_MAX_KEYS + 1] = {BOOLOID};
	int32		typmods[KEYSET_MAX_KEYS + 1] = {-1};
	Datum		values[KEYSET_MAX_KEYS + 1];
	bool		isnull[KEYSET_MAX_KEYS + 1];

	for (int i = 0; i < q->nkeys; i++)
	{
		types[i + 1] = q->keys[i].type;
		typmods[i + 1] = q->keys[i].typmod;
	}
	CursorDecodeValues(VARDATA_ANY(cursor), VARSIZE_ANY_EXHDR(cursor),
					   q->context.data, q->context.len,
					   q->nkeys + 1, types, typmods, values, isnull);
	if (isnull[0])
		ereport(ERROR,
				(errcode(ERRCODE_APICORE_INVALID_CURSOR),
				 errmsg("invalid cursor"),
				 errdetail("The cursor was not made by keyset_page.")));
	*backward = DatumGetBool(values[0]);
	memcpy(position, values + 1, sizeof(Datum) * q->nkeys);
	memcpy(nulls, isnull + 1, sizeof(bool) * q->nkeys);
}

/* Everything before running: arguments, sort, filter, cursor, query text. */
static char *
PreparePage(FunctionCallInfo fcinfo, PageQuery *q, int *page_size, bool *backward)
{
	Datum		position[KEYSET_MAX_KEYS];
	bool		position_nulls[KEYSET_MAX_KEYS];
	char	   *order_by;

	RequireArgument(fcinfo, 0, "relation", "Pass the table to page, e.g. 'orders'.");
	RequireArgument(fcinfo, 1, "order_by", "Pass the sort, e.g. 'created_at DESC, id DESC'.");
	*page_size = PageSize(fcinfo);
	q->relid = PG_GETARG_OID(0);
	CheckRelation(q->relid);
	order_by = text_to_cstring(PG_GETARG_TEXT_PP(1));
	ParseOrderBy(q, order_by);
	MakeSortUnique(q, order_by);
	InitContext(q);
	initStringInfo(&q->where);
	q->limit = *page_size + 1;	/* one more row tells has_more */
	if (!PG_ARGISNULL(4))
		ParseFilter(q, PG_GETARG_JSONB_P(4));
	else
		appendStringInfoString(&q->context, "|{}");
	*backward = false;
	if (PG_ARGISNULL(2))
		return BuildQuery(q, false, NULL, NULL);
	DecodePosition(q, PG_GETARG_TEXT_PP(2), position, position_nulls, backward);
	return BuildQuery(q, *backward, position, position_nulls);
}

/*
 * keyset_page(relation regclass, order_by text, cursor text, page_size int,
 *             filter jsonb) RETURNS jsonb
 */
Datum
apicore_keyset_page(PG_FUNCTION_ARGS)
{
	PageQuery  *q = palloc0(sizeof(PageQuery));
	bool		backward;
	int			page_size;
	char	   *sql = PreparePage(fcinfo, q, &page_size, &backward);
	MemoryContext caller = CurrentMemoryContext;
	Jsonb	   *page;

	SPI_connect();
	if (SPI_execute_plan(PreparedPlan(sql, q->nparams, q->param_types),
						 q->params, q->param_nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "apicore: keyset_page query did not return rows");
	MemoryContextSwitchTo(caller);
	page = BuildEnvelope(q, page_size, !PG_ARGISNULL(2), backward);
	SPI_finish();
	PG_RETURN_JSONB_P(page);
}

/*
 * keyset_page_explain(same arguments) RETURNS SETOF text: the plan of the
 * query keyset_page would run (EXPLAIN, costs off), to check index use.
 */
Datum
apicore_keyset_page_explain(PG_FUNCTION_ARGS)
{
	PageQuery  *q = palloc0(sizeof(PageQuery));
	bool		backward;
	int			page_size;
	char	   *sql = PreparePage(fcinfo, q, &page_size, &backward);
	MemoryContext caller = CurrentMemoryContext;
	Datum		result;

	SPI_connect();
	if (SPI_execute_with_args(psprintf("EXPLAIN (COSTS OFF) %s", sql), q->nparams,
							  q->param_types, q->params, q->param_nulls, false, 0) < 0)
		elog(ERROR, "apicore: keyset_page_explain could not explain the query");
	{
		ArrayBuildState *lines = initArrayResult(TEXTOID, caller, false);

		for (uint64 i = 0; i < SPI_processed; i++)
			accumArrayResult(lines, CStringGetTextDatum(SPI_getvalue(SPI_tuptable->vals[i],
																	  SPI_tuptable->tupdesc, 1)),
							 false, TEXTOID, caller);
		MemoryContextSwitchTo(caller);
		result = makeArrayResult(lines, caller);
	}
	SPI_finish();
	PG_RETURN_DATUM(result);
}
