//! `depends-on:` ordering: apps are pushed after the apps they depend on, in manifest order
//! otherwise; a dependency cycle or an unknown app is an error.

/// One app's name and the names it depends on.
pub struct Node<'a> {
    pub name: &'a str,
    pub depends_on: &'a [String],
}

/// Why the apps cannot be ordered.
#[derive(Debug, PartialEq, Eq)]
pub enum OrderError {
    /// `app` depends on `missing`, which the manifest does not define.
    Unknown { app: String, missing: String },
    /// The names form a cycle (first name repeated at the end).
    Cycle(Vec<String>),
}

/// Indices of `nodes` in push order: dependencies first, otherwise as listed.
pub fn push_order(nodes: &[Node<'_>]) -> Result<Vec<usize>, OrderError> {
    let index_of = |name: &str| nodes.iter().position(|n| n.name == name);
    for node in nodes {
        if let Some(missing) = node.depends_on.iter().find(|d| index_of(d).is_none()) {
            return Err(OrderError::Unknown {
                app: node.name.to_string(),
                missing: missing.clone(),
            });
        }
    }
    let mut done = vec![false; nodes.len()];
    let mut order = Vec::with_capacity(nodes.len());
    for start in 0..nodes.len() {
        let mut path = Vec::new();
        visit(nodes, start, &index_of, &mut done, &mut path, &mut order)?;
    }
    Ok(order)
}

fn visit(
    nodes: &[Node<'_>],
    i: usize,
    index_of: &dyn Fn(&str) -> Option<usize>,
    done: &mut [bool],
    path: &mut Vec<usize>,
    order: &mut Vec<usize>,
) -> Result<(), OrderError> {
    if done[i] {
        return Ok(());
    }
    if let Some(pos) = path.iter().position(|&p| p == i) {
        let mut cycle: Vec<String> = path[pos..]
            .iter()
            .map(|&p| nodes[p].name.to_string())
            .collect();
        cycle.push(nodes[i].name.to_string());
        return Err(OrderError::Cycle(cycle));
    }
    path.push(i);
    for dep in nodes[i].depends_on {
        if let Some(d) = index_of(dep) {
            visit(nodes, d, index_of, done, path, order)?;
        }
    }
    path.pop();
    done[i] = true;
    order.push(i);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn order(list: &[(&str, &[&str])]) -> Result<Vec<usize>, OrderError> {
        let owned = names(list);
        let nodes: Vec<Node> = owned
            .iter()
            .map(|(n, d)| Node {
                name: n,
                depends_on: d,
            })
            .collect();
        push_order(&nodes)
    }

    #[test]
    fn dependencies_come_first_and_cycles_are_named() {
        assert_eq!(
            order(&[("web", &["api", "db"]), ("api", &["db"]), ("db", &[])]).unwrap(),
            vec![2, 1, 0]
        );
        assert_eq!(order(&[("a", &[]), ("b", &[])]).unwrap(), vec![0, 1]);
        assert_eq!(
            order(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]).unwrap_err(),
            OrderError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert_eq!(
            order(&[("a", &["zz"])]).unwrap_err(),
            OrderError::Unknown {
                app: "a".into(),
                missing: "zz".into()
            }
        );
    }
}
