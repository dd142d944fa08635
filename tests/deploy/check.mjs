#!/usr/bin/env node
// Offline checks of deploy/ (no cluster, no registry, no network):
//
//   node check.mjs manifests    every object in deploy/k8s/*.yaml:
//                                 1. kubernetes-models' validate() (its compiled JSON-schema validators: types,
//                                    required fields, enums);
//                                 2. unknown fields, which validate() lets through: each object is walked against the
//                                    model classes' declared properties, read from the package's TypeScript
//                                    declarations (kubernetes-models/<group>/<version>/<Kind>.d.ts and the types they
//                                    import, @kubernetes-models/apimachinery included). A name the walk cannot resolve
//                                    is an error, never a pass;
//                                 3. deployment rules across objects (security context, probes, grace period vs
//                                    drain, Service/PDB selectors, HPA target, Secret/ConfigMap references, writable
//                                    paths under a read-only root, kustomization resources, Containerfile agreement).
//   node check.mjs lint         deploy/Containerfile* with dockerfilelint (all rules on; the one exception is its
//                               missing-tag rule on `FROM ${ARG}`, replaced by a check of the ARG's default).
//   node check.mjs self-test    copies deploy/ to a temporary folder, breaks it one way at a time and requires each
//                               breakage to be reported (and the untouched copy to pass).
//   node check.mjs all          the three above (default).
//   node check.mjs print-args   the Deployment container's args, one per line (CI runs the image with them).
//   node check.mjs print-config NAME KEY   a ConfigMap's data value (CI mounts it where the Deployment does).
//   node check.mjs print-grace  the Deployment's terminationGracePeriodSeconds (CI's podman stop --time).
//
//   --root DIR                  the repository root to check (default: two folders up from this file).
//
// Exit status: 0 clean, 1 problems found, 2 bad usage.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));

// ---------------------------------------------------------------------------------------------------------------
// Unknown fields: a walk over the model's declared properties (TypeScript declarations shipped in the package).
// ---------------------------------------------------------------------------------------------------------------

const dtsFiles = new Map();

function resolveModule(fromFile, spec) {
  if (spec.startsWith('.')) {
    const base = path.resolve(path.dirname(fromFile), spec);
    for (const candidate of [`${base}.d.ts`, path.join(base, 'index.d.ts')]) if (fs.existsSync(candidate)) return candidate;
    throw new Error(`cannot resolve ${spec} from ${fromFile}`);
  }
  const js = require.resolve(spec, { paths: [path.dirname(fromFile), here] });
  const dts = js.replace(/\.(c|m)?js$/, '.d.ts');
  if (!fs.existsSync(dts)) throw new Error(`no declarations for ${spec} (${dts})`);
  return dts;
}

// Splits at top-level occurrences of `sep` (outside {}, <>, (), [] and strings).
function splitTop(text, sep) {
  const parts = [];
  let depth = 0, quote = null, start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) { if (c === quote && text[i - 1] !== '\\') quote = null; continue; }
    if (c === '"' || c === "'") quote = c;
    else if ('{<(['.includes(c)) depth++;
    else if ('}>)]'.includes(c)) depth--;
    else if (c === sep && depth === 0) { parts.push(text.slice(start, i)); start = i + 1; }
  }
  parts.push(text.slice(start));
  return parts.map((p) => p.trim()).filter((p) => p !== '');
}

// `"name"?: type; ...` (the body of an interface or of an inline object type) to a map of name -> type text.
function readMembers(file, body) {
  const members = new Map();
  for (const member of splitTop(body, ';')) {
    const mm = /^"?([^"?:]+)"?(\?)?\s*:\s*([\s\S]+)$/.exec(member);
    if (!mm) throw new Error(`${file}: cannot read member '${member}'`);
    members.set(mm[1], mm[3].trim());
  }
  return members;
}

function parseDts(file) {
  if (dtsFiles.has(file)) return dtsFiles.get(file);
  const text = fs.readFileSync(file, 'utf8').replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
  const parsed = { file, imports: new Map(), interfaces: new Map(), aliases: new Map(), reexports: new Map() };
  for (const m of text.matchAll(/import\s*\{([^}]*)\}\s*from\s*"([^"]+)"/g)) {
    for (const item of m[1].split(',').map((s) => s.trim()).filter(Boolean)) {
      const [imported, local = imported] = item.split(/\s+as\s+/);
      parsed.imports.set(local.trim(), { from: m[2], name: imported.trim() });
    }
  }
  for (const m of text.matchAll(/export\s+\{([^}]*)\}\s*;/g)) {
    for (const item of m[1].split(',').map((s) => s.trim()).filter(Boolean)) {
      const [local, exported = local] = item.split(/\s+as\s+/);
      parsed.reexports.set(exported.trim(), local.trim());
    }
  }
  for (const m of text.matchAll(/export\s+(?:declare\s+)?type\s+(\w+)\s*=\s*([^;]+);/g)) parsed.aliases.set(m[1], m[2].trim());
  for (const m of text.matchAll(/export\s+interface\s+(\w+)(?:\s+extends\s+([^{]+))?\s*\{/g)) {
    let depth = 1, i = m.index + m[0].length;
    const bodyStart = i;
    for (; i < text.length && depth > 0; i++) {
      if (text[i] === '{') depth++;
      else if (text[i] === '}') depth--;
    }
    const members = readMembers(file, text.slice(bodyStart, i - 1));
    const bases = m[2] ? m[2].split(',').map((s) => s.trim()).filter(Boolean) : [];
    parsed.interfaces.set(m[1], { name: m[1], members, bases });
  }
  dtsFiles.set(file, parsed);
  return parsed;
}

const LEAF = { kind: 'leaf' };

// A type expression (as written in a declaration file) to a node: leaf, array, map, object or a lazy named ref.
function parseType(file, text) {
  const t = text.trim().replace(/;$/, '').trim();
  const union = splitTop(t, '|');
  if (union.length > 1) {
    const nodes = union.map((u) => deref(parseType(file, u)));
    return nodes.every((n) => n.kind === 'leaf') ? LEAF : { kind: 'any' };
  }
  let m;
  if ((m = /^Array<([\s\S]*)>$/.exec(t))) return { kind: 'array', of: parseType(file, m[1]) };
  if ((m = /^([\s\S]+)\[\]$/.exec(t)) && !t.startsWith('{')) return { kind: 'array', of: parseType(file, m[1]) };
  if ((m = /^\{\s*\[key:\s*string\]\s*:\s*([\s\S]*?);?\s*\}$/.exec(t))) return { kind: 'map', of: parseType(file, m[1]) };
  if ((m = /^\{([\s\S]*)\}$/.exec(t)) && m[1].trim() !== '') {
    const members = new Map();
    for (const [k, v] of readMembers(file, m[1])) members.set(k, parseType(file, v));
    return { kind: 'object', name: 'inline object', members };
  }
  if (['string', 'number', 'boolean', 'null', 'undefined'].includes(t) || /^"[^"]*"$/.test(t) || /^\w+\["\w+"\]$/.test(t)) return LEAF;
  if (['any', 'unknown', 'object', '{}'].includes(t)) return { kind: 'any' };
  if (/^\w+$/.test(t)) return { kind: 'ref', file, name: t };
  throw new Error(`${file}: cannot read type '${t}'`);
}

const TYPE_META = { kind: 'object', name: 'TypeMeta', members: new Map([['apiVersion', LEAF], ['kind', LEAF]]) };

function resolveName(file, name, seen = new Set()) {
  const key = `${file}#${name}`;
  if (seen.has(key)) throw new Error(`cyclic alias ${key}`);
  seen.add(key);
  if (name === 'TypeMeta' && !parseDts(file).interfaces.has(name)) return TYPE_META;
  const d = parseDts(file);
  if (d.interfaces.has(name)) {
    const iface = d.interfaces.get(name);
    if (!iface.node) {
      const members = new Map();
      iface.node = { kind: 'object', name: name.replace(/^I(?=[A-Z])/, ''), members };
      for (const base of iface.bases) {
        const b = deref(resolveName(file, base));
        if (b.kind !== 'object') throw new Error(`${file}: ${name} extends ${base}, not an interface`);
        for (const [k, v] of b.members) members.set(k, v);
      }
      for (const [k, v] of iface.members) members.set(k, parseType(file, v));
    }
    return iface.node;
  }
  if (d.aliases.has(name)) return parseType(file, d.aliases.get(name));
  if (d.reexports.has(name) && d.reexports.get(name) !== name) return resolveName(file, d.reexports.get(name), seen);
  if (d.imports.has(name)) {
    const imp = d.imports.get(name);
    return resolveName(resolveModule(file, imp.from), imp.name, seen);
  }
  throw new Error(`${file}: cannot resolve type ${name}`);
}

function deref(node) {
  while (node.kind === 'ref') {
    if (!node.resolved) node.resolved = resolveName(node.file, node.name);
    node = node.resolved;
  }
  return node;
}

function fieldPath(base, key) {
  if (typeof key === 'number') return `${base}[${key}]`;
  return /^[A-Za-z_$][\w$]*$/.test(key) ? (base ? `${base}.${key}` : key) : `${base}[${JSON.stringify(key)}]`;
}

function unknownFields(value, node, where, out) {
  node = deref(node);
  if (value === null || typeof value !== 'object') return;
  if (node.kind === 'array') { if (Array.isArray(value)) value.forEach((v, i) => unknownFields(v, node.of, fieldPath(where, i), out)); return; }
  if (node.kind === 'map') { if (!Array.isArray(value)) for (const [k, v] of Object.entries(value)) unknownFields(v, node.of, fieldPath(where, k), out); return; }
  if (node.kind !== 'object' || Array.isArray(value)) return;
  if (node.members.size === 0) return; // free-form (RawExtension and the like)
  for (const [k, v] of Object.entries(value)) {
    if (!node.members.has(k)) out.push(`${fieldPath(where, k)}: unknown field (${node.name} has no '${k}')`);
    else unknownFields(v, node.members.get(k), fieldPath(where, k), out);
  }
}

function modelFor(apiVersion, kind) {
  if (typeof apiVersion !== 'string' || typeof kind !== 'string' || !/^[\w.\-/]+$/.test(apiVersion) || !/^\w+$/.test(kind)) return null;
  const spec = `kubernetes-models/${apiVersion}/${kind}`;
  let mod, dts;
  try {
    mod = require(spec);
    dts = resolveModule(path.join(here, 'check.mjs'), spec);
  } catch { return null; }
  const Model = mod[kind];
  if (typeof Model !== 'function') return null;
  return { Model, dts, iface: `I${kind}` };
}

// ---------------------------------------------------------------------------------------------------------------
// Loading deploy/k8s
// ---------------------------------------------------------------------------------------------------------------

const KUSTOMIZATION_KEYS = new Set([
  'apiVersion', 'kind', 'metadata', 'resources', 'components', 'namespace', 'namePrefix', 'nameSuffix', 'labels',
  'commonLabels', 'commonAnnotations', 'images', 'replicas', 'patches', 'configMapGenerator', 'secretGenerator',
  'generatorOptions', 'replacements', 'buildMetadata', 'openapi', 'sortOptions', 'helmCharts',
]);

function loadManifests(root, problems) {
  const dir = path.join(root, 'deploy', 'k8s');
  const rel = (f) => path.relative(root, f);
  const objects = [];
  let kustomization = null;
  if (!fs.existsSync(dir)) { problems.push(`${rel(dir)}: missing`); return { objects, kustomization, dir }; }
  const files = fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort();
  for (const name of files) {
    const file = path.join(dir, name);
    // YAML 1.1, as kubectl reads manifests (so `on`, `yes`, `off` are booleans here too).
    const docs = YAML.parseAllDocuments(fs.readFileSync(file, 'utf8'), { version: '1.1', uniqueKeys: true, prettyErrors: false });
    docs.forEach((doc, index) => {
      const at = docs.length > 1 ? `${rel(file)} (document ${index + 1})` : rel(file);
      for (const e of [...doc.errors, ...doc.warnings]) problems.push(`${at}: YAML: ${e.message.split('\n')[0]}`);
      if (doc.errors.length) return;
      const obj = doc.toJS();
      if (obj == null) return;
      if (obj.kind === 'Kustomization') {
        if (name !== 'kustomization.yaml') problems.push(`${at}: a Kustomization must be named kustomization.yaml`);
        kustomization = { obj, at, file };
        return;
      }
      objects.push({ obj, at, file: name, id: `${obj.kind}/${obj.metadata?.name}` });
    });
  }
  return { objects, kustomization, dir, files };
}

function checkSchemas(objects, problems) {
  for (const { obj, at, id } of objects) {
    if (typeof obj !== 'object' || Array.isArray(obj)) { problems.push(`${at}: not a mapping`); continue; }
    const model = modelFor(obj.apiVersion, obj.kind);
    if (!model) { problems.push(`${at}: ${obj.apiVersion} ${obj.kind}: no such model in kubernetes-models (apiVersion or kind wrong?)`); continue; }
    if (!obj.metadata?.name) problems.push(`${at}: ${obj.kind}: metadata.name is required`);
    try {
      new model.Model(obj).validate();
    } catch (e) {
      if (!Array.isArray(e.errors)) throw e;
      for (const err of e.errors) {
        const where = err.instancePath.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
          .reduce((acc, p) => fieldPath(acc, /^\d+$/.test(p) ? Number(p) : p), '');
        const extra = err.params?.allowedValues ? ` (${err.params.allowedValues.join(', ')})` : '';
        problems.push(`${at}: ${id}: ${where || '(object)'}: ${err.message}${extra}`);
      }
    }
    const unknown = [];
    unknownFields(obj, resolveName(model.dts, model.iface), '', unknown);
    for (const u of unknown) problems.push(`${at}: ${id}: ${u}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Deployment rules across objects
// ---------------------------------------------------------------------------------------------------------------

const matches = (selector, labels) => selector && Object.keys(selector).length > 0 &&
  Object.entries(selector).every(([k, v]) => labels?.[k] === v);

function argValue(args, flag) {
  const i = args.indexOf(flag);
  if (i >= 0) return args[i + 1];
  const eq = args.find((a) => typeof a === 'string' && a.startsWith(`${flag}=`));
  return eq?.slice(flag.length + 1);
}

const underMount = (file, mounts) => mounts.find((m) => file === m.mountPath || file.startsWith(`${m.mountPath.replace(/\/$/, '')}/`));

function checkRules(root, loaded, containerfiles, problems) {
  const { objects, kustomization, files } = loaded;
  const byKind = (k) => objects.filter((o) => o.obj.kind === k);
  const find = (kind, name) => objects.find((o) => o.obj.kind === kind && o.obj.metadata?.name === name);
  const deployments = byKind('Deployment');
  if (deployments.length === 0) problems.push('deploy/k8s: no Deployment');

  for (const d of deployments) {
    const p = (msg) => problems.push(`${d.at}: ${d.id}: ${msg}`);
    const spec = d.obj.spec ?? {};
    const pod = spec.template?.spec ?? {};
    const podLabels = spec.template?.metadata?.labels ?? {};
    if (!matches(spec.selector?.matchLabels, podLabels)) p('spec.selector.matchLabels does not select the pod template labels');
    const psc = pod.securityContext ?? {};
    const containers = pod.containers ?? [];
    if (containers.length === 0) p('no containers');
    const hpa = byKind('HorizontalPodAutoscaler').find((h) => h.obj.spec?.scaleTargetRef?.kind === 'Deployment' && h.obj.spec?.scaleTargetRef?.name === d.obj.metadata?.name);
    if (hpa && spec.replicas !== undefined) p(`spec.replicas is set although ${hpa.id} scales it (every apply would reset the replica count)`);
    const volumes = new Map((pod.volumes ?? []).map((v) => [v.name, v]));
    for (const v of volumes.values()) {
      if (v.configMap) {
        const cm = find('ConfigMap', v.configMap.name);
        if (!cm && !v.configMap.optional) p(`volume ${v.name}: ConfigMap ${v.configMap.name} is not defined in deploy/k8s`);
      }
      if (v.secret && !find('Secret', v.secret.secretName) && !v.secret.optional) p(`volume ${v.name}: Secret ${v.secret.secretName} is not defined in deploy/k8s (an example counts)`);
    }
    for (const [ci, c] of containers.entries()) {
      const at = `spec.template.spec.containers[${ci}] (${c.name})`;
      const sc = c.securityContext ?? {};
      if ((sc.runAsNonRoot ?? psc.runAsNonRoot) !== true) p(`${at}: runAsNonRoot must be true`);
      if ((sc.runAsUser ?? psc.runAsUser) === 0) p(`${at}: runAsUser 0`);
      if (sc.readOnlyRootFilesystem !== true) p(`${at}: securityContext.readOnlyRootFilesystem must be true`);
      if (sc.allowPrivilegeEscalation !== false) p(`${at}: securityContext.allowPrivilegeEscalation must be false`);
      if (sc.privileged === true) p(`${at}: privileged`);
      if (!(sc.capabilities?.drop ?? []).includes('ALL')) p(`${at}: securityContext.capabilities.drop must include ALL`);
      if (sc.capabilities?.add?.length) p(`${at}: adds capabilities ${sc.capabilities.add.join(', ')}`);
      for (const r of ['cpu', 'memory']) if (c.resources?.requests?.[r] === undefined) p(`${at}: resources.requests.${r} is required (scheduling and the HPA use it)`);
      if (c.resources?.limits?.memory === undefined) p(`${at}: resources.limits.memory is required`);
      if (!c.readinessProbe) p(`${at}: readinessProbe is required (drain takes the pod out of the Service)`);
      if (!c.livenessProbe) p(`${at}: livenessProbe is required`);
      if (typeof c.image !== 'string' || !c.image) p(`${at}: image is required`);
      const ports = c.ports ?? [];
      const portNames = new Set(ports.map((x) => x.name).filter(Boolean));
      const portNumbers = new Set(ports.map((x) => x.containerPort));
      for (const probeName of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
        const probe = c[probeName];
        if (!probe) continue;
        const port = probe.httpGet?.port ?? probe.tcpSocket?.port ?? probe.grpc?.port;
        if (typeof port === 'string' && !portNames.has(port)) p(`${at}: ${probeName} uses port '${port}', which the container does not name`);
        if (typeof port === 'number' && !portNumbers.has(port)) p(`${at}: ${probeName} uses port ${port}, which the container does not declare`);
      }
      // Grace period: preStop + the server's drain (--drain-seconds, default 30) must fit, with room to exit.
      const args = (c.args ?? []).map(String);
      const drain = Number(argValue(args, '--drain-seconds') ?? 30);
      const pre = c.lifecycle?.preStop;
      const preStop = pre?.sleep?.seconds ?? (pre?.exec?.command?.[0] === 'sleep' ? Number(pre.exec.command[1]) : 0);
      const grace = pod.terminationGracePeriodSeconds ?? 30;
      if (!(grace > drain + preStop)) p(`terminationGracePeriodSeconds ${grace} must exceed preStop ${preStop} s + drain ${drain} s`);
      // Read-only root: /tmp and every path the server writes must be on a writable volume.
      const mounts = c.volumeMounts ?? [];
      for (const m of mounts) if (!volumes.has(m.name)) p(`${at}: volumeMount ${m.name} has no volume`);
      const writable = mounts.filter((m) => !m.readOnly);
      if (!underMount('/tmp', writable)) p(`${at}: /tmp is not a writable volume (TMPDIR and HOME are /tmp under a read-only root)`);
      const db = argValue(args, '--experiments-db');
      if (db && !underMount(db, writable)) p(`${at}: --experiments-db ${db} is not on a writable volume (the root file system is read-only)`);
      const experiments = argValue(args, '--experiments');
      if (experiments) {
        const m = underMount(experiments, mounts);
        if (!m) p(`${at}: --experiments ${experiments} is not on a mounted volume`);
        else if (m.subPath) p(`${at}: --experiments is mounted with subPath, which never sees ConfigMap updates`);
        else {
          const v = volumes.get(m.name);
          const key = path.posix.relative(m.mountPath, experiments);
          const cm = v?.configMap && find('ConfigMap', v.configMap.name);
          if (cm && !(key in (cm.obj.data ?? {}))) p(`${at}: --experiments ${experiments}: ConfigMap ${v.configMap.name} has no key ${key}`);
        }
      }
      for (const e of c.env ?? []) {
        const ref = e.valueFrom?.secretKeyRef ?? e.valueFrom?.configMapKeyRef;
        if (!ref || ref.optional) continue;
        const kind = e.valueFrom.secretKeyRef ? 'Secret' : 'ConfigMap';
        const target = find(kind, ref.name);
        if (!target) { p(`${at}: env ${e.name}: ${kind} ${ref.name} is not defined in deploy/k8s (an example counts)`); continue; }
        const keys = { ...(target.obj.data ?? {}), ...(target.obj.stringData ?? {}), ...(target.obj.binaryData ?? {}) };
        if (!(ref.key in keys)) p(`${at}: env ${e.name}: ${kind} ${ref.name} has no key ${ref.key}`);
      }
      // The image and the manifest agree on ports and user.
      for (const cf of containerfiles) {
        const exposed = new Set(cf.expose);
        const declared = new Set(ports.map((x) => x.containerPort));
        if ([...exposed].sort().join() !== [...declared].sort().join()) p(`${at}: container ports ${[...declared].join(', ')} differ from ${cf.name} EXPOSE ${[...exposed].join(', ')}`);
        const uid = sc.runAsUser ?? psc.runAsUser;
        if (uid !== undefined && cf.user !== undefined && String(uid) !== cf.user) p(`${at}: runAsUser ${uid} differs from ${cf.name} USER ${cf.user}`);
      }
    }
  }

  for (const s of byKind('Service')) {
    const p = (msg) => problems.push(`${s.at}: ${s.id}: ${msg}`);
    const target = deployments.find((d) => matches(s.obj.spec?.selector, d.obj.spec?.template?.metadata?.labels));
    if (!target) { p('spec.selector matches no Deployment pod template'); continue; }
    const ports = (target.obj.spec.template.spec.containers ?? []).flatMap((c) => c.ports ?? []);
    for (const port of s.obj.spec?.ports ?? []) {
      const tp = port.targetPort ?? port.port;
      const ok = typeof tp === 'string' ? ports.some((x) => x.name === tp) : ports.some((x) => x.containerPort === tp);
      if (!ok) p(`port ${port.name ?? port.port}: targetPort ${tp} is not a container port of ${target.id}`);
    }
  }
  for (const pdb of byKind('PodDisruptionBudget')) {
    if (!deployments.some((d) => matches(pdb.obj.spec?.selector?.matchLabels, d.obj.spec?.template?.metadata?.labels)))
      problems.push(`${pdb.at}: ${pdb.id}: spec.selector matches no Deployment pod template`);
  }
  for (const h of byKind('HorizontalPodAutoscaler')) {
    const ref = h.obj.spec?.scaleTargetRef ?? {};
    if (!find(ref.kind, ref.name)) problems.push(`${h.at}: ${h.id}: scaleTargetRef ${ref.kind}/${ref.name} is not defined in deploy/k8s`);
    if ((h.obj.spec?.minReplicas ?? 1) > (h.obj.spec?.maxReplicas ?? 0)) problems.push(`${h.at}: ${h.id}: minReplicas exceeds maxReplicas`);
  }
  for (const s of byKind('Secret')) {
    if (!/\.example\.ya?ml$/.test(s.file)) problems.push(`${s.at}: ${s.id}: Secrets in the repository must be examples (name the file *.example.yaml)`);
  }

  // kustomization.yaml lists every manifest except the examples, and only files that exist.
  if (!kustomization) problems.push('deploy/k8s/kustomization.yaml: missing');
  else {
    const k = kustomization.obj;
    for (const key of Object.keys(k)) if (!KUSTOMIZATION_KEYS.has(key)) problems.push(`${kustomization.at}: unknown field ${key}`);
    if (k.apiVersion !== 'kustomize.config.k8s.io/v1beta1') problems.push(`${kustomization.at}: apiVersion must be kustomize.config.k8s.io/v1beta1`);
    const listed = new Set(k.resources ?? []);
    for (const r of listed) if (!fs.existsSync(path.join(root, 'deploy', 'k8s', r))) problems.push(`${kustomization.at}: resource ${r} does not exist`);
    for (const f of files ?? []) {
      if (f === 'kustomization.yaml') continue;
      const example = /\.example\.ya?ml$/.test(f);
      if (example && listed.has(f)) problems.push(`${kustomization.at}: lists ${f}, an example`);
      if (!example && !listed.has(f)) problems.push(`${kustomization.at}: does not list ${f}`);
    }
    const names = new Set(deployments.flatMap((d) => (d.obj.spec?.template?.spec?.containers ?? []).map((c) => String(c.image).split(/[:@]/)[0])));
    for (const img of k.images ?? []) if (!names.has(img.name)) problems.push(`${kustomization.at}: images entry ${img.name} matches no container image`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Containerfiles: dockerfilelint plus the facts the rules above compare with.
// ---------------------------------------------------------------------------------------------------------------

function containerfilePaths(root) {
  const dir = path.join(root, 'deploy');
  return fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => /^(Containerfile|Dockerfile)(\..+)?$/.test(f)).sort().map((f) => path.join(dir, f)) : [];
}

// Instructions with continuation lines joined (comments and blank lines dropped).
function instructions(text) {
  const out = [];
  let cur = '';
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!cur && (line === '' || line.startsWith('#'))) continue;
    if (cur && line.startsWith('#')) continue;
    if (line.endsWith('\\')) { cur += `${line.slice(0, -1)} `; continue; }
    out.push(cur + line);
    cur = '';
  }
  if (cur) out.push(cur);
  return out.map((s) => { const m = /^(\S+)\s*([\s\S]*)$/.exec(s); return { cmd: m[1].toUpperCase(), args: m[2] }; });
}

function readContainerfile(file) {
  const text = fs.readFileSync(file, 'utf8');
  const ins = instructions(text);
  const args = new Map();
  for (const i of ins.filter((x) => x.cmd === 'ARG')) { const [k, v] = i.args.split('='); args.set(k.trim(), v?.trim()); }
  const expose = ins.filter((x) => x.cmd === 'EXPOSE').flatMap((x) => x.args.split(/\s+/)).map((p) => Number(p.split('/')[0]));
  const user = ins.filter((x) => x.cmd === 'USER').map((x) => x.args.split(':')[0]).pop();
  return { file, name: path.basename(file), text, ins, args, expose, user };
}

function lintContainerfiles(root, problems) {
  const dockerfilelint = require('dockerfilelint');
  const files = containerfilePaths(root);
  if (files.length === 0) problems.push('deploy: no Containerfile');
  const parsed = [];
  for (const file of files) {
    const cf = readContainerfile(file);
    parsed.push(cf);
    const rel = path.relative(root, file);
    // Content, not a path: dockerfilelint does not care what the file is called. Its config folder is this one
    // (no .dockerfilelintrc here: every rule is on).
    const fromLines = new Set();
    cf.text.split(/\r?\n/).forEach((line, i) => { if (/^\s*FROM\s+\$\{?\w+\}?\s*(AS\s+\w+)?\s*$/i.test(line)) fromLines.add(i + 1); });
    for (const item of dockerfilelint.run(here, cf.text)) {
      // `FROM ${BASE_IMAGE}` has no literal tag to see; the ARG's default is checked below instead.
      if (item.rule === 'missing_tag' && fromLines.has(item.line)) continue;
      problems.push(`${rel}:${item.line}: ${item.title} [${item.rule}]: ${item.description}`);
    }
    for (const from of cf.ins.filter((x) => x.cmd === 'FROM')) {
      const m = /^\$\{?(\w+)\}?/.exec(from.args);
      if (!m) continue;
      const value = cf.args.get(m[1]);
      if (!value) problems.push(`${rel}: FROM \${${m[1]}} needs ARG ${m[1]} with a default before it`);
      else if (!/[:@]/.test(value.split('/').pop())) problems.push(`${rel}: ARG ${m[1]} default ${value} has no tag`);
      else if (/:latest$/.test(value)) problems.push(`${rel}: ARG ${m[1]} default ${value} uses the latest tag`);
    }
    const user = cf.user;
    if (user === undefined || user === '0' || user === 'root') problems.push(`${rel}: USER must be a non-root numeric uid`);
    else if (!/^\d+$/.test(user)) problems.push(`${rel}: USER ${user} must be numeric (runAsNonRoot can only verify a numeric user)`);
    const entry = cf.ins.filter((x) => x.cmd === 'ENTRYPOINT').pop();
    if (!entry || !/"serve"/.test(entry.args)) problems.push(`${rel}: ENTRYPOINT must be the exec form of featureflow serve`);
    else { try { JSON.parse(entry.args); } catch { problems.push(`${rel}: ENTRYPOINT is not a JSON array`); } }
    const cmd = cf.ins.filter((x) => x.cmd === 'CMD').pop();
    if (cmd) { try { JSON.parse(cmd.args); } catch { problems.push(`${rel}: CMD is not a JSON array (exec form keeps the server PID 1, so SIGTERM reaches it)`); } }
  }
  return parsed;
}

// ---------------------------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------------------------

function runManifests(root) {
  const problems = [];
  const loaded = loadManifests(root, problems);
  checkSchemas(loaded.objects, problems);
  const cfProblems = [];
  const containerfiles = lintContainerfiles(root, cfProblems); // facts only; lint problems are the lint run's
  checkRules(root, loaded, containerfiles, problems);
  return { problems, count: loaded.objects.length + (loaded.kustomization ? 1 : 0) };
}

function runLint(root) {
  const problems = [];
  const parsed = lintContainerfiles(root, problems);
  return { problems, count: parsed.length };
}

function copyDeploy(root) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'featureflow-deploy-selftest-'));
  fs.cpSync(path.join(root, 'deploy'), path.join(tmp, 'deploy'), { recursive: true });
  return tmp;
}

function editYaml(tmp, file, edit) {
  const p = path.join(tmp, 'deploy', 'k8s', file);
  const docs = YAML.parseAllDocuments(fs.readFileSync(p, 'utf8'), { version: '1.1' }).map((d) => d.toJS());
  docs.forEach(edit);
  fs.writeFileSync(p, docs.map((d) => YAML.stringify(d, { version: '1.1' })).join('---\n'));
}

const editText = (tmp, rel, edit) => { const p = path.join(tmp, rel); fs.writeFileSync(p, edit(fs.readFileSync(p, 'utf8'))); };
const container = (d) => d.spec.template.spec.containers[0];

// Each case breaks a fresh copy one way; the run must report a problem matching `expect`.
const SELF_TEST_CASES = [
  ['unknown field in a probe', 'manifests', /unknown field.*paht/, (t) => editYaml(t, 'deployment.yaml', (d) => { container(d).readinessProbe.httpGet.paht = '/readyz'; })],
  ['unknown field at spec level', 'manifests', /unknown field.*selecter/, (t) => editYaml(t, 'service.yaml', (s) => { s.spec.selecter = s.spec.selector; })],
  ['unknown field in a map value type', 'manifests', /unknown field.*averageUtilisation/, (t) => editYaml(t, 'hpa.yaml', (h) => { h.spec.metrics[0].resource.target.averageUtilisation = 70; })],
  ['wrong type', 'manifests', /containerPort: must be integer/, (t) => editYaml(t, 'deployment.yaml', (d) => { container(d).ports[0].containerPort = 'fifty thousand'; })],
  ['missing required field', 'manifests', /required property 'name'|required property name/, (t) => editYaml(t, 'deployment.yaml', (d) => { delete container(d).name; })],
  ['wrong apiVersion', 'manifests', /no such model/, (t) => editYaml(t, 'pdb.yaml', (p) => { p.apiVersion = 'policy/v2'; })],
  ['YAML syntax error', 'manifests', /YAML/, (t) => editText(t, 'deploy/k8s/service.yaml', (s) => `${s}\n  bad: [unclosed\n`)],
  ['Service selects nothing', 'manifests', /selector matches no Deployment/, (t) => editYaml(t, 'service.yaml', (s) => { s.spec.selector['app.kubernetes.io/name'] = 'other'; })],
  ['grace period shorter than drain', 'manifests', /terminationGracePeriodSeconds/, (t) => editYaml(t, 'deployment.yaml', (d) => { d.spec.template.spec.terminationGracePeriodSeconds = 20; })],
  ['writable root file system', 'manifests', /readOnlyRootFilesystem/, (t) => editYaml(t, 'deployment.yaml', (d) => { container(d).securityContext.readOnlyRootFilesystem = false; })],
  ['experiments db on the read-only root', 'manifests', /experiments-db/, (t) => editYaml(t, 'deployment.yaml', (d) => { const a = container(d).args; a[a.indexOf('--experiments-db') + 1] = '/app/experiments.db'; })],
  ['missing Secret key', 'manifests', /has no key/, (t) => editYaml(t, 'deployment.yaml', (d) => { container(d).env.find((e) => e.name === 'FEATUREFLOW_API_KEYS').valueFrom.secretKeyRef.key = 'keys'; })],
  ['kustomization lists a missing file', 'manifests', /does not exist/, (t) => editYaml(t, 'kustomization.yaml', (k) => { k.resources.push('ingress.yaml'); })],
  ['Containerfile lint', 'lint', /apt-get/, (t) => editText(t, 'deploy/Containerfile', (s) => s.replace('USER 10001:10001', 'RUN apt-get install curl\nUSER 10001:10001'))],
  ['Containerfile base without a tag', 'lint', /has no tag/, (t) => editText(t, 'deploy/Containerfile', (s) => s.replace(/ARG BASE_IMAGE=\S+/, 'ARG BASE_IMAGE=docker.io/library/debian'))],
  ['Containerfile runs as root', 'lint', /USER/, (t) => editText(t, 'deploy/Containerfile', (s) => s.replace('USER 10001:10001', 'USER root'))],
];

function runSelfTest(root) {
  const problems = [];
  let count = 0;
  const pristine = copyDeploy(root);
  try {
    for (const kind of ['manifests', 'lint']) {
      count++;
      const r = kind === 'manifests' ? runManifests(pristine) : runLint(pristine);
      if (r.problems.length) problems.push(`self-test: the unmodified copy fails ${kind}: ${r.problems[0]}`);
      else console.log(`  ok   unmodified copy passes ${kind}`);
    }
  } finally { fs.rmSync(pristine, { recursive: true, force: true }); }
  for (const [name, kind, expect, breakIt] of SELF_TEST_CASES) {
    count++;
    const tmp = copyDeploy(root);
    try {
      breakIt(tmp);
      const r = kind === 'manifests' ? runManifests(tmp) : runLint(tmp);
      const hit = r.problems.find((x) => expect.test(x));
      if (hit) console.log(`  ok   ${name}: ${hit.replace(tmp + path.sep, '')}`);
      else problems.push(`self-test: '${name}' was not reported (${kind} said: ${r.problems.join(' | ') || 'nothing'})`);
    } catch (e) {
      problems.push(`self-test: '${name}' crashed: ${e.stack}`);
    } finally { fs.rmSync(tmp, { recursive: true, force: true }); }
  }
  return { problems, count };
}

function main(argv) {
  let root = path.resolve(here, '..', '..');
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--root') root = path.resolve(argv[++i] ?? '');
    else rest.push(argv[i]);
  }
  const [command = 'all', ...args] = rest;

  if (command === 'print-args' || command === 'print-config' || command === 'print-grace') {
    const problems = [];
    const { objects } = loadManifests(root, problems);
    if (problems.length) { console.error(problems.join('\n')); return 1; }
    const d = objects.find((o) => o.obj.kind === 'Deployment');
    if (command === 'print-args') {
      for (const a of container(d.obj).args ?? []) console.log(String(a));
    } else if (command === 'print-grace') {
      console.log(d.obj.spec.template.spec.terminationGracePeriodSeconds ?? 30);
    } else {
      const [name, key] = args;
      const cm = objects.find((o) => o.obj.kind === 'ConfigMap' && o.obj.metadata?.name === name);
      if (!cm || !(key in (cm.obj.data ?? {}))) { console.error(`no ConfigMap ${name} with key ${key}`); return 1; }
      process.stdout.write(cm.obj.data[key]);
    }
    return 0;
  }

  const runs = { manifests: [runManifests], lint: [runLint], 'self-test': [runSelfTest], all: [runManifests, runLint, runSelfTest] }[command];
  if (!runs) { console.error(`usage: node check.mjs [manifests|lint|self-test|all|print-args|print-grace|print-config NAME KEY] [--root DIR]`); return 2; }
  let failed = false;
  for (const run of runs) {
    const label = run === runManifests ? 'manifests' : run === runLint ? 'Containerfile lint' : 'self-test';
    const { problems, count } = run(root);
    for (const p of problems) console.log(`  FAIL ${p}`);
    console.log(`${label}: ${problems.length === 0 ? 'ok' : `${problems.length} problem(s)`} (${count} ${run === runManifests ? 'objects' : run === runLint ? 'files' : 'cases'})`);
    failed ||= problems.length > 0;
  }
  return failed ? 1 : 0;
}

process.exitCode = main(process.argv.slice(2));
