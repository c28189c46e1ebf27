// Renders deploy/k8s (the base and every overlay) with `kubectl kustomize` and checks the result:
//  1. every object against the Kubernetes OpenAPI schemas (kubernetes-models) or the Prometheus
//     Operator CRD schemas (@kubernetes-models/prometheus-operator); an unknown kind is an error;
//  2. no two objects of a render share kind, namespace and name;
//  3. the structure the deployment relies on: a stage StatefulSet with gRPC probes whose pods'
//     arguments agree with the configured stage count (ConfigMap cluster.yaml, PIPEINFER_STAGES,
//     replicas, the draft's --stage0/--last, one NetworkPolicy per stage link), routers whose
//     --draft names existing draft Services and whose grace period covers preStop + drain, a
//     NetworkPolicy, a ServiceMonitor or PodMonitor, and a PrometheusRule equal to
//     deploy/prometheus/pipeinfer-rules.yaml;
//     with TLS (overlays/tls): every stage, draft and router passes --tls-ca/--tls-cert/--tls-key
//     naming the ca.crt/tls.crt/tls.key of a Secret volume its pod mounts, stages also a
//     --tls-allow-cn, and the probes do not speak plaintext gRPC or HTTP to a TLS port; a pod that
//     mounts a Secret but whose binary takes no TLS flags is an error;
//  4. negative controls: a few deliberately broken copies of a render must be rejected.
// Usage: node validate_manifests.mjs --kubectl PATH --repo DIR --modules DIR/node_modules
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isDeepStrictEqual } from 'node:util';
import path from 'node:path';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (i % 2 ? acc : [...acc, [a.replace(/^--/, ''), all[i + 1]]]), []));
const repo = path.resolve(args.repo);
const require = createRequire(path.join(path.resolve(args.modules), 'noop.js'));
const YAML = require('yaml');

// ---------------------------------------------------------------------------------------------
// Schema validation.

const CLUSTER_SCOPED = new Set(['Namespace', 'ClusterRole', 'ClusterRoleBinding', 'PersistentVolume',
  'StorageClass', 'CustomResourceDefinition', 'PriorityClass']);

function modelModule(apiVersion) {
  if (apiVersion === 'monitoring.coreos.com/v1') {
    return '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
  }
  if (!/^([a-z0-9.-]+\/)?v[0-9a-z]+$/.test(apiVersion)) return null;
  return `kubernetes-models/${apiVersion}`;
}

function schemaErrors(obj) {
  const mod = obj.apiVersion && modelModule(obj.apiVersion);
  if (!mod) return [`no schema for apiVersion ${obj.apiVersion}`];
  let exports;
  try {
    exports = require(mod);
  } catch (e) {
    return [`no schema for apiVersion ${obj.apiVersion}`];
  }
  const Model = exports[obj.kind];
  if (!Model) return [`no schema for ${obj.apiVersion} ${obj.kind}`];
  try {
    new Model(structuredClone(obj)).validate();
    return [];
  } catch (e) {
    return [String(e.message || e)];
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers over a render.

const id = (o) => `${o.kind} ${o.metadata?.namespace ?? '-'}/${o.metadata?.name}`;
const ns = (o) => o.metadata?.namespace ?? '';
const byKind = (objs, kind) => objs.filter((o) => o.kind === kind);
const find = (objs, kind, namespace, name) =>
  objs.find((o) => o.kind === kind && ns(o) === namespace && o.metadata.name === name);

function labelsMatch(selector, labels) {
  if (!selector) return false;
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (labels?.[k] !== v) return false;
  for (const e of selector.matchExpressions ?? []) {
    const has = labels && Object.hasOwn(labels, e.key);
    if (e.operator === 'In' && !(has && e.values.includes(labels[e.key]))) return false;
    if (e.operator === 'NotIn' && has && e.values.includes(labels[e.key])) return false;
    if (e.operator === 'Exists' && !has) return false;
    if (e.operator === 'DoesNotExist' && has) return false;
  }
  return true;
}

// The pod templates of the workloads in a namespace, with the pod labels the controller adds.
function podTemplates(objs, namespace) {
  const out = [];
  for (const o of objs) {
    if (ns(o) !== namespace || !['Deployment', 'StatefulSet'].includes(o.kind)) continue;
    out.push({ owner: o, labels: o.spec.template.metadata?.labels ?? {}, spec: o.spec.template.spec });
  }
  return out;
}

// The container's environment as Kubernetes builds it (envFrom ConfigMaps, then env literals).
function containerEnv(objs, namespace, c, errors, where) {
  const env = {};
  for (const ef of c.envFrom ?? []) {
    if (!ef.configMapRef) continue;
    const cm = find(objs, 'ConfigMap', namespace, ef.configMapRef.name);
    if (!cm) {
      errors.push(`${where}: envFrom names ConfigMap ${ef.configMapRef.name}, not in the render`);
      continue;
    }
    Object.assign(env, cm.data ?? {});
  }
  for (const e of c.env ?? []) if (e.value !== undefined) env[e.name] = e.value;
  return env;
}

// Expands $(VAR) the way the kubelet does for args; an unknown variable is an error (the kubelet
// would pass it through literally).
function expandArgs(c, env, errors, where) {
  return (c.args ?? []).map((a) => a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v) => {
    if (Object.hasOwn(env, v)) return env[v];
    errors.push(`${where}: argument ${a} uses $(${v}), which is not in the container's environment`);
    return m;
  }));
}

function flagValue(argv, flag) {
  for (let i = 0; i < argv.length; ++i) {
    if (argv[i].startsWith(`${flag}=`)) return argv[i].slice(flag.length + 1);
    if (argv[i] === flag && i + 1 < argv.length) return argv[i + 1];
  }
  return undefined;
}

const portOf = (c, name) => c.ports?.find((p) => p.name === name)?.containerPort;
const binary = (c) => path.basename((c.command ?? [])[0] ?? '');

// ---------------------------------------------------------------------------------------------
// Structural checks of one render.

function checkSecurity(objs, errors) {
  for (const t of objs.flatMap((o) => podTemplates(objs, ns(o)).filter((p) => p.owner === o))) {
    const where = id(t.owner);
    if (t.spec.securityContext?.runAsNonRoot !== true) errors.push(`${where}: pod is not runAsNonRoot`);
    for (const c of [...(t.spec.initContainers ?? []), ...t.spec.containers]) {
      const sc = c.securityContext ?? {};
      if (sc.readOnlyRootFilesystem !== true) errors.push(`${where}/${c.name}: root filesystem is writable`);
      if (sc.allowPrivilegeEscalation !== false) errors.push(`${where}/${c.name}: allows privilege escalation`);
      for (const kind of ['requests', 'limits']) {
        for (const r of ['cpu', 'memory']) {
          if (!c.resources?.[kind]?.[r]) errors.push(`${where}/${c.name}: no ${kind}.${r}`);
        }
      }
    }
  }
}

function checkReferences(objs, errors) {
  for (const svc of byKind(objs, 'Service')) {
    if (!podTemplates(objs, ns(svc)).some((p) => labelsMatch({ matchLabels: svc.spec.selector }, p.labels))) {
      errors.push(`${id(svc)}: its selector matches no pod template`);
    }
  }
  for (const o of [...byKind(objs, 'PodDisruptionBudget'), ...byKind(objs, 'PodMonitor')]) {
    if (!podTemplates(objs, ns(o)).some((p) => labelsMatch(o.spec.selector, p.labels))) {
      errors.push(`${id(o)}: its selector matches no pod template`);
    }
  }
  for (const sm of byKind(objs, 'ServiceMonitor')) {
    const svcs = byKind(objs, 'Service').filter((s) => ns(s) === ns(sm) && labelsMatch(sm.spec.selector, s.metadata.labels));
    if (svcs.length === 0) errors.push(`${id(sm)}: its selector matches no Service`);
    for (const ep of sm.spec.endpoints) {
      if (!svcs.every((s) => s.spec.ports.some((p) => p.name === ep.port))) {
        errors.push(`${id(sm)}: port ${ep.port} missing on a selected Service`);
      }
    }
  }
  for (const hpa of byKind(objs, 'HorizontalPodAutoscaler')) {
    const t = hpa.spec.scaleTargetRef;
    const target = find(objs, t.kind, ns(hpa), t.name);
    if (!target) errors.push(`${id(hpa)}: scales ${t.kind} ${t.name}, not in the render`);
    else if (target.spec.replicas !== undefined) {
      errors.push(`${id(target)}: sets spec.replicas although ${id(hpa)} owns it`);
    }
  }
  for (const t of objs.flatMap((o) => podTemplates(objs, ns(o)).filter((p) => p.owner === o))) {
    for (const v of t.spec.volumes ?? []) {
      if (v.configMap && !find(objs, 'ConfigMap', ns(t.owner), v.configMap.name)) {
        errors.push(`${id(t.owner)}: volume ${v.name} names ConfigMap ${v.configMap.name}, not in the render`);
      }
      if (v.persistentVolumeClaim && !find(objs, 'PersistentVolumeClaim', ns(t.owner), v.persistentVolumeClaim.claimName)) {
        errors.push(`${id(t.owner)}: volume ${v.name} names a claim that is not in the render`);
      }
    }
    const mounts = new Set([...(t.spec.initContainers ?? []), ...t.spec.containers].flatMap((c) => (c.volumeMounts ?? []).map((m) => m.name)));
    const volumes = new Set([...(t.spec.volumes ?? []).map((v) => v.name),
      ...(t.owner.spec.volumeClaimTemplates ?? []).map((v) => v.metadata.name)]);
    for (const m of mounts) if (!volumes.has(m)) errors.push(`${id(t.owner)}: mounts ${m}, which is no volume`);
  }
}

function grpcProbesOk(c, port) {
  return ['startupProbe', 'readinessProbe', 'livenessProbe'].every((p) => c[p]?.grpc?.port === port);
}

// A stage's or draft service's probes: gRPC health on its gRPC port, or, when that port speaks TLS
// (the kubelet's gRPC probes are plaintext only), GET /health on its plaintext metrics port.
function serviceProbesOk(c, argv, port) {
  if (flagValue(argv, '--tls-cert') === undefined) return grpcProbesOk(c, port);
  return ['startupProbe', 'readinessProbe', 'livenessProbe'].every((p) => c[p]?.httpGet?.path === '/health' &&
    (c[p].httpGet.port === 'metrics' || c[p].httpGet.port === portOf(c, 'metrics')) &&
    (c[p].httpGet.scheme ?? 'HTTP') === 'HTTP');
}

// The TLS flags of one pipeinfer container against its pod: the three files lie in a Secret volume
// the container mounts (the kubernetes.io/tls key names), and a mounted Secret is used. Returns
// whether the container runs with TLS.
const TLS_FILES = { '--tls-ca': 'ca.crt', '--tls-cert': 'tls.crt', '--tls-key': 'tls.key' };
function checkTlsArgs(spec, c, argv, errors, where) {
  const secretVolumes = new Map((spec.volumes ?? []).filter((v) => v.secret).map((v) => [v.name, v.secret]));
  const secretMounts = (c.volumeMounts ?? []).filter((m) => secretVolumes.has(m.name));
  const given = Object.keys(TLS_FILES).filter((f) => flagValue(argv, f) !== undefined);
  if (given.length === 0) {
    for (const m of secretMounts) {
      errors.push(`${where}: mounts Secret ${secretVolumes.get(m.name).secretName} at ${m.mountPath} but passes no --tls-* flag`);
    }
    return false;
  }
  for (const [flag, key] of Object.entries(TLS_FILES)) {
    const value = flagValue(argv, flag);
    if (value === undefined) {
      errors.push(`${where}: TLS without ${flag}`);
      continue;
    }
    const m = secretMounts.find((x) => path.posix.dirname(value) === x.mountPath.replace(/\/+$/, ''));
    const secret = m && secretVolumes.get(m.name);
    const items = secret?.items?.map((i) => i.path);
    if (!m) errors.push(`${where}: ${flag}=${value} is not in a mounted Secret volume`);
    else if (path.posix.basename(value) !== key || (items && !items.includes(key))) {
      errors.push(`${where}: ${flag}=${value}, want ${m.mountPath}/${key} (Secret ${secret.secretName})`);
    }
  }
  return true;
}

// Every pipeinfer container of the render: TLS flags that match the mounted Secret, all or none.
function checkTls(objs, errors) {
  const seen = [];
  for (const t of objs.flatMap((o) => podTemplates(objs, ns(o)).filter((p) => p.owner === o))) {
    for (const c of t.spec.containers) {
      const bin = binary(c);
      if (!['pipeinfer-stage', 'pipeinfer-draft', 'pipeinfer-router'].includes(bin)) continue;
      const where = `${id(t.owner)}/${c.name}`;
      const argv = expandArgs(c, containerEnv(objs, ns(t.owner), c, errors, where), errors, where);
      const tls = checkTlsArgs(t.spec, c, argv, errors, where);
      seen.push([where, tls]);
      if (tls && bin === 'pipeinfer-stage' && !flagValue(argv, '--tls-allow-cn')) {
        errors.push(`${where}: TLS without --tls-allow-cn (any certificate of the CA could open the pipeline)`);
      }
      if (tls && bin === 'pipeinfer-router') {
        for (const p of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
          if (c[p]?.httpGet && c[p].httpGet.scheme !== 'HTTPS') errors.push(`${where}: ${p} is plain HTTP on an HTTPS port`);
        }
      }
    }
  }
  if (seen.some(([, tls]) => tls) && seen.some(([, tls]) => !tls)) {
    errors.push(`TLS on ${seen.filter(([, t]) => t).map(([w]) => w).join(', ')} but not on ${seen.filter(([, t]) => !t).map(([w]) => w).join(', ')}`);
  }
}

// Returns the number of pipelines (stage StatefulSets) checked.
function checkPipelines(objs, errors) {
  const stsList = byKind(objs, 'StatefulSet').filter((s) =>
    s.spec.template.spec.containers.some((c) => binary(c) === 'pipeinfer-stage'));
  for (const sts of stsList) {
    const namespace = ns(sts);
    const where = id(sts);
    const c = sts.spec.template.spec.containers.find((x) => binary(x) === 'pipeinfer-stage');
    const env = containerEnv(objs, namespace, c, errors, where);
    const argv = expandArgs(c, env, errors, where);
    const n = sts.spec.replicas;
    const grpcPort = portOf(c, 'grpc');
    // The configured stage count: cluster.yaml of the ConfigMap, and PIPEINFER_STAGES.
    const cmName = c.envFrom?.find((e) => e.configMapRef)?.configMapRef.name;
    const cm = cmName && find(objs, 'ConfigMap', namespace, cmName);
    if (!cm?.data?.['cluster.yaml']) {
      errors.push(`${where}: its ConfigMap has no cluster.yaml`);
    } else {
      const cfg = YAML.parse(cm.data['cluster.yaml']);
      const keys = { stages: 'PIPEINFER_STAGES', model: 'PIPEINFER_MODEL', draft_model: 'PIPEINFER_DRAFT_MODEL',
        mode: 'PIPEINFER_MODE', threads: 'PIPEINFER_THREADS', concurrency: 'PIPEINFER_CONCURRENCY',
        kv_memory: 'PIPEINFER_KV_MEMORY' };
      for (const [k, v] of Object.entries(keys)) {
        if (String(cfg[k]) !== cm.data[v]) {
          errors.push(`${id(cm)}: cluster.yaml ${k}=${cfg[k]} but ${v}=${cm.data[v]}`);
        }
      }
      if (cfg.stages !== n) errors.push(`${where}: replicas ${n} but cluster.yaml says ${cfg.stages} stages`);
    }
    if (flagValue(argv, '--stages') !== String(n)) {
      errors.push(`${where}: --stages=${flagValue(argv, '--stages')} but replicas=${n}`);
    }
    if (!argv.includes('--stage-from-hostname')) errors.push(`${where}: no --stage-from-hostname`);
    if (flagValue(argv, '--stage') !== undefined) errors.push(`${where}: a fixed --stage in a StatefulSet`);
    const svc = find(objs, 'Service', namespace, sts.spec.serviceName);
    if (!svc || svc.spec.clusterIP !== 'None' || !svc.spec.publishNotReadyAddresses) {
      errors.push(`${where}: serviceName ${sts.spec.serviceName} is not a headless Service publishing not-ready addresses`);
    }
    if (sts.spec.podManagementPolicy !== 'Parallel') errors.push(`${where}: stages must start in Parallel`);
    const stageAddr = (i) => `${sts.metadata.name}-${i}.${sts.spec.serviceName}:${grpcPort}`;
    if (flagValue(argv, '--downstream') !== stageAddr('{next}')) {
      errors.push(`${where}: --downstream=${flagValue(argv, '--downstream')}, want ${stageAddr('{next}')}`);
    }
    if (flagValue(argv, '--listen') !== `0.0.0.0:${grpcPort}`) errors.push(`${where}: --listen is not the grpc port`);
    if (flagValue(argv, '--metrics-listen') !== `0.0.0.0:${portOf(c, 'metrics')}`) {
      errors.push(`${where}: --metrics-listen is not the metrics port`);
    }
    if (!serviceProbesOk(c, argv, grpcPort)) {
      errors.push(`${where}: startup/readiness/liveness must be gRPC probes on ${grpcPort} (with TLS: GET /health on the metrics port)`);
    }
    // The draft service of this chain.
    const drafts = byKind(objs, 'Deployment').filter((d) => ns(d) === namespace &&
      d.spec.template.spec.containers.some((x) => binary(x) === 'pipeinfer-draft'));
    if (drafts.length !== 1) errors.push(`${where}: ${drafts.length} draft Deployments in its namespace, want 1`);
    for (const d of drafts) {
      const dc = d.spec.template.spec.containers.find((x) => binary(x) === 'pipeinfer-draft');
      const dargv = expandArgs(dc, containerEnv(objs, namespace, dc, errors, id(d)), errors, id(d));
      if (d.spec.replicas !== 1) errors.push(`${id(d)}: replicas ${d.spec.replicas}, want 1 per chain`);
      if (flagValue(dargv, '--stage0') !== stageAddr(0)) errors.push(`${id(d)}: --stage0 is not ${stageAddr(0)}`);
      if (flagValue(dargv, '--last') !== stageAddr(n - 1)) {
        errors.push(`${id(d)}: --last=${flagValue(dargv, '--last')}, want ${stageAddr(n - 1)} (${n} stages)`);
      }
      if (!serviceProbesOk(dc, dargv, portOf(dc, 'grpc'))) {
        errors.push(`${id(d)}: probes must be gRPC on its grpc port (with TLS: GET /health on the metrics port)`);
      }
    }
    // Network: stage i > 0 admits stage i-1 (one policy per link), every stage admits the draft.
    const nps = byKind(objs, 'NetworkPolicy').filter((p) => ns(p) === namespace);
    const podLabels = (i) => ({ ...sts.spec.template.metadata.labels, 'statefulset.kubernetes.io/pod-name': `${sts.metadata.name}-${i}` });
    const admits = (i, fromLabels) => nps.some((p) => labelsMatch(p.spec.podSelector, podLabels(i)) &&
      (p.spec.ingress ?? []).some((r) => (r.from ?? []).some((f) => !f.namespaceSelector && labelsMatch(f.podSelector, fromLabels)) &&
        (r.ports ?? []).some((pt) => pt.port === 'grpc' || pt.port === grpcPort)));
    const draftLabels = drafts[0]?.spec.template.metadata.labels ?? {};
    for (let i = 0; i < n + 2; ++i) {
      if (i < n && !admits(i, draftLabels)) errors.push(`${where}: stage ${i} does not admit the draft service`);
      const fromPrev = i > 0 && admits(i, podLabels(i - 1));
      if (i > 0 && i < n && !fromPrev) errors.push(`${where}: no NetworkPolicy lets stage ${i - 1} reach stage ${i}`);
      if (i >= n && nps.some((p) => labelsMatch(p.spec.podSelector, podLabels(i)) && !labelsMatch(p.spec.podSelector, podLabels(0)))) {
        errors.push(`${where}: a link NetworkPolicy selects stage ${i}, beyond the ${n} stages`);
      }
      for (let j = 0; j < n; ++j) {
        if (j !== i - 1 && i < n && admits(i, podLabels(j))) errors.push(`${where}: stage ${i} admits stage ${j}`);
      }
    }
  }
  return stsList.length;
}

function checkRouters(objs, errors) {
  const routers = byKind(objs, 'Deployment').filter((d) =>
    d.spec.template.spec.containers.some((c) => binary(c) === 'pipeinfer-router'));
  for (const d of routers) {
    const where = id(d);
    const spec = d.spec.template.spec;
    const c = spec.containers.find((x) => binary(x) === 'pipeinfer-router');
    const argv = expandArgs(c, containerEnv(objs, ns(d), c, errors, where), errors, where);
    for (const entry of (flagValue(argv, '--draft') ?? '').split(',')) {
      const m = /^([a-z0-9-]+)(?:\.([a-z0-9-]+))?(?:\.svc(?:\.cluster\.local)?)?:([0-9]+)$/.exec(entry);
      const svc = m && find(objs, 'Service', m[2] ?? ns(d), m[1]);
      if (!svc || !svc.spec.ports.some((p) => String(p.port) === m[3])) {
        errors.push(`${where}: --draft entry "${entry}" is no draft Service port in the render`);
      }
    }
    const drain = Number(flagValue(argv, '--drain-seconds'));
    const pre = c.lifecycle?.preStop?.exec?.command ?? [];
    const sleep = path.basename(pre[0] ?? '') === 'sleep' ? Number(pre[1]) : NaN;
    if (!(drain > 0) || !(sleep >= 0)) errors.push(`${where}: needs --drain-seconds and a preStop sleep`);
    else if (!(spec.terminationGracePeriodSeconds > sleep + drain)) {
      errors.push(`${where}: terminationGracePeriodSeconds ${spec.terminationGracePeriodSeconds} <= preStop ${sleep} + drain ${drain}`);
    }
    if (c.readinessProbe?.httpGet?.path !== '/ready') errors.push(`${where}: readiness must GET /ready`);
    if (c.livenessProbe?.httpGet?.path !== '/health') errors.push(`${where}: liveness must GET /health`);
    if (!byKind(objs, 'HorizontalPodAutoscaler').some((h) => ns(h) === ns(d) && h.spec.scaleTargetRef.name === d.metadata.name)) {
      errors.push(`${where}: no HorizontalPodAutoscaler`);
    }
  }
  return routers.length;
}

// Strings with runs of white space collapsed: kustomize v5 re-emits folded (>-) scalars with
// more-indented lines with extra blank lines, which changes no PromQL expression or annotation.
function squeeze(v) {
  if (typeof v === 'string') return v.replace(/\s+/g, ' ').trim();
  if (Array.isArray(v)) return v.map(squeeze);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, squeeze(x)]));
  return v;
}

function checkRender(objs, rulesFile) {
  const errors = [];
  const seen = new Map();
  for (const o of objs) {
    for (const e of schemaErrors(o)) errors.push(`${id(o)}: schema: ${e}`);
    const key = `${o.apiVersion?.split('/').slice(0, -1).join('/')}|${o.kind}|${ns(o)}|${o.metadata?.name}`;
    if (seen.has(key)) errors.push(`${id(o)}: name collides with another object of the render`);
    seen.set(key, o);
  }
  if (errors.length) return errors;  // the structural checks assume schema-valid objects
  checkSecurity(objs, errors);
  checkReferences(objs, errors);
  checkTls(objs, errors);
  if (checkPipelines(objs, errors) === 0) errors.push('no StatefulSet of stages');
  if (checkRouters(objs, errors) === 0) errors.push('no router Deployment');
  for (const kind of ['NetworkPolicy', 'PrometheusRule']) {
    if (byKind(objs, kind).length === 0) errors.push(`no ${kind}`);
  }
  if (byKind(objs, 'ServiceMonitor').length + byKind(objs, 'PodMonitor').length === 0) {
    errors.push('no ServiceMonitor or PodMonitor');
  }
  for (const pr of byKind(objs, 'PrometheusRule')) {
    if (rulesFile && !isDeepStrictEqual(squeeze(pr.spec.groups), squeeze(rulesFile.groups))) {
      errors.push(`${id(pr)}: differs from deploy/prometheus/pipeinfer-rules.yaml (run deploy/k8s/sync-prometheusrule.sh)`);
    }
  }
  return errors;
}

// ---------------------------------------------------------------------------------------------
// Rendering and the negative controls.

function render(dir) {
  // stderr is kept back: kubectl v1.2x+ warns that `bases` and `patchesStrategicMerge` are
  // deprecated (they are used on purpose, for Debian's kubectl 1.20; see deploy/README.md).
  let out;
  try {
    out = execFileSync(args.kubectl, ['kustomize', dir],
      { encoding: 'utf8', maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    throw new Error(`exit ${e.status}: ${String(e.stderr).trim()}`);
  }
  const docs = YAML.parseAllDocuments(out);
  const objs = [];
  for (const d of docs) {
    if (d.errors.length) throw new Error(`${dir}: YAML: ${d.errors[0].message}`);
    const o = d.toJS();
    if (o !== null) objs.push(o);
  }
  return objs;
}

// Each breaks one copy of a valid render; checkRender must report it.
const NEGATIVE_CONTROLS = [
  ['replicas as a string', (objs) => { byKind(objs, 'StatefulSet')[0].spec.replicas = '2'; }],
  ['a container without a name', (objs) => { delete byKind(objs, 'Deployment')[0].spec.template.spec.containers[0].name; }],
  ['a PrometheusRule rule without expr', (objs) => { delete byKind(objs, 'PrometheusRule')[0].spec.groups[0].rules[0].expr; }],
  ['a ServiceMonitor endpoint with a numeric port name', (objs) => { byKind(objs, 'ServiceMonitor')[0].spec.endpoints[0].port = 8080; }],
  ['one more stage than the config says', (objs) => { byKind(objs, 'StatefulSet')[0].spec.replicas += 1; }],
  ['the draft pointing at the wrong last stage', (objs) => {
    const c = byKind(objs, 'Deployment').find((d) => d.metadata.name.includes('draft')).spec.template.spec.containers[0];
    c.args = c.args.map((a) => a.replace(/^--last=pipeinfer-stage-\d+/, '--last=pipeinfer-stage-0'));
  }],
  ['a grace period shorter than the drain', (objs) => {
    byKind(objs, 'Deployment').find((d) => d.metadata.name.includes('router')).spec.template.spec.terminationGracePeriodSeconds = 20;
  }],
  ['a duplicated object', (objs) => { objs.push(structuredClone(byKind(objs, 'Service')[0])); }],
  ['a missing stage link policy', (objs) => {
    objs.splice(objs.findIndex((o) => o.kind === 'NetworkPolicy' && /link-1$/.test(o.metadata.name)), 1);
  }],
];

// The same, on a copy of the TLS render (overlays/tls).
const argsOf = (objs, bin) => byKind(objs, bin === 'pipeinfer-stage' ? 'StatefulSet' : 'Deployment')
  .flatMap((o) => o.spec.template.spec.containers).find((c) => binary(c) === bin);
const TLS_NEGATIVE_CONTROLS = [
  ['a stage without --tls-key', (objs) => {
    const c = argsOf(objs, 'pipeinfer-stage');
    c.args = c.args.filter((a) => !a.startsWith('--tls-key'));
  }],
  ['the draft\'s CA outside the mounted Secret', (objs) => {
    const c = argsOf(objs, 'pipeinfer-draft');
    c.args = c.args.map((a) => a.replace(/^--tls-ca=.*/, '--tls-ca=/etc/ssl/ca.crt'));
  }],
  ['a router certificate that is not the Secret\'s tls.crt', (objs) => {
    const c = argsOf(objs, 'pipeinfer-router');
    c.args = c.args.map((a) => a.replace(/^--tls-cert=(.*)\/tls\.crt$/, '--tls-cert=$1/router.pem'));
  }],
  ['a router without TLS flags beside TLS stages', (objs) => {
    const c = argsOf(objs, 'pipeinfer-router');
    c.args = c.args.filter((a) => !a.startsWith('--tls-'));
  }],
  ['plaintext gRPC probes on a TLS stage', (objs) => {
    const c = argsOf(objs, 'pipeinfer-stage');
    c.readinessProbe = { grpc: { port: portOf(c, 'grpc') }, periodSeconds: 5 };
  }],
];

function runControls(objs, rulesFile, controls) {
  let failed = 0;
  const baseline = new Set(checkRender(objs, rulesFile));
  for (const [what, breakIt] of controls) {
    const copy = structuredClone(objs);
    breakIt(copy);
    const errors = checkRender(copy, rulesFile).filter((e) => !baseline.has(e));
    if (errors.length === 0) {
      console.log(`FAIL negative control not detected: ${what}`);
      ++failed;
    } else {
      console.log(`ok   negative control "${what}" rejected: ${errors[0]}`);
    }
  }
  return failed;
}

function main() {
  const k8s = path.join(repo, 'deploy/k8s');
  const rulesPath = path.join(repo, 'deploy/prometheus/pipeinfer-rules.yaml');
  const rulesFile = existsSync(rulesPath) ? YAML.parse(readFileSync(rulesPath, 'utf8')) : null;
  const dirs = [path.join(k8s, 'base'), ...readdirSync(path.join(k8s, 'overlays'), { withFileTypes: true })
    .filter((e) => e.isDirectory() && existsSync(path.join(k8s, 'overlays', e.name, 'kustomization.yaml')))
    .map((e) => path.join(k8s, 'overlays', e.name)).sort()];
  let failed = 0;
  let cpuDemo = null;
  let tlsObjs = null;
  for (const dir of dirs) {
    const name = path.relative(k8s, dir);
    let objs;
    try {
      objs = render(dir);
    } catch (e) {
      console.log(`FAIL ${name}: kubectl kustomize: ${e.message}`);
      ++failed;
      continue;
    }
    const errors = checkRender(objs, rulesFile);
    const kinds = {};
    for (const o of objs) kinds[o.kind] = (kinds[o.kind] ?? 0) + 1;
    const summary = Object.entries(kinds).map(([k, v]) => `${v} ${k}`).join(', ');
    if (errors.length) {
      ++failed;
      console.log(`FAIL ${name} (${objs.length} objects):`);
      for (const e of errors) console.log(`  ${e}`);
    } else {
      console.log(`ok   ${name}: ${objs.length} objects valid (${summary})`);
    }
    if (name === 'overlays/cpu-demo') cpuDemo = objs;
    if (name === 'overlays/tls') tlsObjs = objs;
  }
  for (const [overlay, objs, controls] of [['cpu-demo', cpuDemo, NEGATIVE_CONTROLS], ['tls', tlsObjs, TLS_NEGATIVE_CONTROLS]]) {
    if (!objs) {
      console.log(`FAIL no overlays/${overlay} to run the negative controls on`);
      ++failed;
    } else {
      failed += runControls(objs, rulesFile, controls);
    }
  }
  if (!rulesFile) console.log('note: deploy/prometheus/pipeinfer-rules.yaml not found; PrometheusRule not compared');
  process.exitCode = failed ? 1 : 0;
}

main();
