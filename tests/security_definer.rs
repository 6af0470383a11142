//! SECURITY.md lists every `security definer` function with who may execute it; the
//! database must agree exactly, and each must have an empty `search_path`.

use edgesync_integration::{db, stack};
use std::collections::BTreeMap;

/// The table between the `security-definer` markers: signature → grantees.
fn documented() -> BTreeMap<String, String> {
    let paths = xtask::tools::Paths::discover().unwrap();
    let doc = std::fs::read_to_string(paths.root.join("SECURITY.md")).unwrap();
    let (_, rest) = doc.split_once("<!-- security-definer:begin -->").expect("SECURITY.md has the begin marker");
    let (table, _) = rest.split_once("<!-- security-definer:end -->").expect("SECURITY.md has the end marker");
    table
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let signature = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((signature.to_owned(), cells.get(2)?.to_string()))
        })
        .collect()
}

#[test]
fn every_security_definer_function_is_documented_with_its_grants() {
    let info = stack();
    let mut db = db(&info);
    let mut tx = db.transaction().unwrap();
    // Types print schema-qualified unless in pg_catalog.
    tx.batch_execute("set local search_path = ''").unwrap();
    let rows = tx
        .query(
            "select n.nspname || '.' || p.proname || '(' || pg_catalog.oidvectortypes(p.proargtypes) || ')',
                    p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype,
                    coalesce(p.proconfig, '{}') @> array['search_path=\"\"'],
                    coalesce((select pg_catalog.string_agg(distinct a.grantee::pg_catalog.regrole::text, ', ')
                                from pg_catalog.aclexplode(p.proacl) a
                               where a.privilege_type = 'EXECUTE' and a.grantee <> p.proowner), '')
               from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
              where p.prosecdef and n.nspname in ('public', 'edgesync')
              order by 1",
            &[],
        )
        .unwrap();
    let mut actual = BTreeMap::new();
    for r in rows {
        let (signature, trigger, pinned, grantees): (String, bool, bool, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        assert!(pinned, "{signature} has no empty search_path");
        let shown = match (trigger, grantees.is_empty()) {
            (true, _) => "trigger".to_owned(),
            (false, true) => "(owner only)".to_owned(),
            (false, false) => grantees,
        };
        actual.insert(signature, shown);
    }
    assert!(actual.len() >= 10, "{actual:#?}");
    assert_eq!(actual, documented(), "SECURITY.md and the database differ");
}
