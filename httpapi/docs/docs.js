// Documentation page of sandbox-broker: fetches openapi.json and renders the
// operations, parameters, responses and schemas. Self-contained: no
// libraries, no other origins, no inline styles (the page's CSP forbids them).
(function () {
  'use strict';

  var app = document.getElementById('app');
  var spec = null;

  // el builds an element; children are nodes or strings (added as text).
  function el(tag, cls) {
    var e = document.createElement(tag);
    if (cls) {
      e.className = cls;
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined || c === false) {
        continue;
      }
      e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return e;
  }

  function link(href, text, cls) {
    var a = el('a', cls, text);
    a.setAttribute('href', href);
    return a;
  }

  function code(text) {
    return el('code', null, String(text));
  }

  // resolve follows a local $ref such as #/components/schemas/Sandbox.
  function resolve(obj) {
    var seen = 0;
    while (obj && obj.$ref && seen < 20) {
      var parts = obj.$ref.replace(/^#\//, '').split('/');
      var cur = spec;
      for (var i = 0; i < parts.length && cur; i++) {
        cur = cur[parts[i].replace(/~1/g, '/').replace(/~0/g, '~')];
      }
      obj = cur;
      seen++;
    }
    return obj || {};
  }

  function refName(ref) {
    return ref.split('/').pop();
  }

  // text renders a description: blank lines split paragraphs, "* " lines
  // make a list, `x` becomes code.
  function text(desc) {
    var box = el('div', 'desc');
    if (!desc) {
      return box;
    }
    desc.split(/\n\s*\n/).forEach(function (block) {
      var lines = block.split('\n');
      if (lines.every(function (l) { return /^\s*\* /.test(l); })) {
        var ul = el('ul');
        lines.forEach(function (l) { ul.appendChild(inline(el('li'), l.replace(/^\s*\* /, ''))); });
        box.appendChild(ul);
      } else {
        box.appendChild(inline(el('p'), block));
      }
    });
    return box;
  }

  function inline(parent, s) {
    s.split(/(`[^`]*`)/).forEach(function (part) {
      if (/^`.*`$/.test(part)) {
        parent.appendChild(code(part.slice(1, -1)));
      } else if (part) {
        parent.appendChild(document.createTextNode(part));
      }
    });
    return parent;
  }

  // typeLabel describes a schema in one line; references link to the
  // Schemas section.
  function typeLabel(schema) {
    if (!schema) {
      return el('span', 'type', 'any');
    }
    if (schema.$ref) {
      var name = refName(schema.$ref);
      return link('#schema-' + name, name, 'type');
    }
    var span = el('span', 'type');
    if (schema.type === 'array') {
      span.appendChild(document.createTextNode('array of '));
      span.appendChild(typeLabel(schema.items));
    } else if (schema.type === 'object' && schema.additionalProperties && typeof schema.additionalProperties === 'object' && !schema.properties) {
      span.appendChild(document.createTextNode('map of string to '));
      span.appendChild(typeLabel(schema.additionalProperties));
    } else {
      span.appendChild(document.createTextNode(schema.type || 'any'));
      if (schema.format) {
        span.appendChild(document.createTextNode(' (' + schema.format + ')'));
      }
    }
    if (schema.nullable) {
      span.appendChild(document.createTextNode(' | null'));
    }
    return span;
  }

  function constraints(schema) {
    var out = [];
    if (!schema || schema.$ref) {
      return out;
    }
    if (schema.enum) {
      out.push('one of: ' + schema.enum.map(function (v) { return JSON.stringify(v); }).join(', '));
    }
    if (schema.minimum !== undefined) {
      out.push('min ' + schema.minimum);
    }
    if (schema.maximum !== undefined) {
      out.push('max ' + schema.maximum);
    }
    if (schema.maxLength !== undefined) {
      out.push('at most ' + schema.maxLength + ' bytes');
    }
    if (schema.default !== undefined) {
      out.push('default ' + JSON.stringify(schema.default));
    }
    return out;
  }

  // schemaView shows an inline object's properties as a table, nested
  // inline objects indented; anything else as its type label.
  function schemaView(schema, depth) {
    var box = el('div', 'schema');
    if (!schema || schema.$ref || schema.type !== 'object' || !schema.properties || depth > 6) {
      box.appendChild(typeLabel(schema));
      var c = constraints(schema);
      if (c.length) {
        box.appendChild(el('span', 'enum', ' ' + c.join('; ')));
      }
      return box;
    }
    var required = schema.required || [];
    var table = el('table', null, el('tr', null, el('th', null, 'field'), el('th', null, 'type'), el('th', null, 'description')));
    Object.keys(schema.properties).forEach(function (name) {
      var p = schema.properties[name];
      var typeCell = el('td', null, typeLabel(p));
      var descCell = el('td', null, text(p.description));
      var c = constraints(p);
      if (c.length) {
        descCell.appendChild(el('div', 'enum', c.join('; ')));
      }
      if (!p.$ref && p.type === 'object' && p.properties) {
        descCell.appendChild(el('div', 'nested', schemaView(p, depth + 1)));
      }
      table.appendChild(el('tr', null,
        el('td', null, code(name), required.indexOf(name) >= 0 ? el('span', 'req', 'required') : el('span', 'muted', ' optional')),
        typeCell, descCell));
    });
    box.appendChild(table);
    if (schema.additionalProperties === false) {
      box.appendChild(el('div', 'muted', 'No other fields.'));
    }
    return box;
  }

  function parametersView(params) {
    var table = el('table', null, el('tr', null, el('th', null, 'name'), el('th', null, 'in'), el('th', null, 'type'), el('th', null, 'description')));
    params.forEach(function (ref) {
      var p = resolve(ref);
      var desc = el('td', null, text(p.description));
      var c = constraints(p.schema);
      if (c.length) {
        desc.appendChild(el('div', 'enum', c.join('; ')));
      }
      table.appendChild(el('tr', null,
        el('td', null, code(p.name), p.required ? el('span', 'req', 'required') : null, p.deprecated ? el('span', 'deprecated', 'deprecated') : null),
        el('td', null, p.in), el('td', null, typeLabel(p.schema)), desc));
    });
    return table;
  }

  function securityView(security) {
    if (!security || security.length === 0) {
      return el('p', 'muted', 'No authentication.');
    }
    var names = security.map(function (req) {
      var keys = Object.keys(req);
      return keys.length ? keys.join(' + ') : 'none';
    });
    var p = el('p', null, 'Authorization: Bearer token, one of: ');
    names.forEach(function (n, i) {
      if (i) {
        p.appendChild(document.createTextNode(', '));
      }
      p.appendChild(n === 'none' ? el('span', 'muted', 'no token') : link('#security-' + n, n));
    });
    return p;
  }

  function responseView(status, ref) {
    var r = resolve(ref);
    var box = el('div', 'resp');
    var head = el('div', null, el('span', 'status s' + status.charAt(0), status));
    if (ref.$ref) {
      head.appendChild(el('span', 'muted', refName(ref.$ref) + ': '));
    }
    head.appendChild(inline(el('span'), r.description || ''));
    box.appendChild(head);
    if (r['x-error-codes']) {
      var codes = el('div', 'codes', 'error.code: ');
      r['x-error-codes'].forEach(function (c) { codes.appendChild(code(c)); });
      box.appendChild(codes);
    }
    var headers = Object.keys(r.headers || {});
    if (headers.length) {
      var hl = el('div', 'muted', 'Headers: ');
      headers.forEach(function (h, i) {
        var hv = resolve(r.headers[h]);
        if (i) {
          hl.appendChild(document.createTextNode(', '));
        }
        var c = code(h + (hv.required ? '' : '?'));
        c.setAttribute('title', hv.description || '');
        hl.appendChild(c);
      });
      box.appendChild(hl);
    }
    Object.keys(r.content || {}).forEach(function (ct) {
      var media = r.content[ct];
      box.appendChild(el('div', null, el('span', 'muted', ct + ': '), schemaView(media.schema, 0)));
      if (media.example !== undefined) {
        box.appendChild(el('pre', null, JSON.stringify(media.example, null, 2)));
      }
    });
    return box;
  }

  function operationView(path, method, op) {
    var d = el('details', 'op');
    d.id = 'op-' + (op.operationId || method + path);
    d.setAttribute('data-search', (method + ' ' + path + ' ' + (op.summary || '') + ' ' + (op.operationId || '')).toLowerCase());
    d.appendChild(el('summary', null, el('span', 'method ' + method, method.toUpperCase()), el('span', 'path', path), el('span', 'summary', op.summary || '')));
    var body = el('div', 'opbody', text(op.description));
    body.appendChild(el('h4', null, 'Authentication'));
    body.appendChild(securityView(op.security !== undefined ? op.security : spec.security));
    if (op.parameters && op.parameters.length) {
      body.appendChild(el('h4', null, 'Parameters'));
      body.appendChild(parametersView(op.parameters));
    }
    body.appendChild(el('h4', null, 'Request body'));
    body.appendChild(op.requestBody ? schemaView(resolve(op.requestBody), 0) : el('p', 'muted', 'None.'));
    body.appendChild(el('h4', null, 'Responses'));
    Object.keys(op.responses || {}).sort().forEach(function (status) {
      body.appendChild(responseView(status, op.responses[status]));
    });
    d.appendChild(body);
    return d;
  }

  function render(doc) {
    spec = doc;
    var info = doc.info || {};
    document.title = info.title || document.title;
    document.getElementById('title').textContent = info.title || 'API';
    document.getElementById('title').appendChild(el('span', 'version', ' ' + (info.version || '') + ' · OpenAPI ' + doc.openapi));
    app.textContent = '';
    app.appendChild(el('section', 'intro', text(info.description)));

    var filter = el('input', 'filter');
    filter.type = 'search';
    filter.placeholder = 'Filter operations (path, method, summary)';
    app.appendChild(filter);

    // Group operations by their first tag, in the order of doc.tags.
    var tagOrder = (doc.tags || []).map(function (t) { return t.name; });
    var groups = {};
    Object.keys(doc.paths || {}).forEach(function (path) {
      var item = doc.paths[path];
      ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'].forEach(function (m) {
        if (!item[m]) {
          return;
        }
        var tag = (item[m].tags || ['other'])[0];
        if (tagOrder.indexOf(tag) < 0) {
          tagOrder.push(tag);
        }
        (groups[tag] = groups[tag] || []).push({ path: path, method: m, op: item[m] });
      });
    });

    var toc = el('nav', 'toc');
    var sections = el('div');
    tagOrder.forEach(function (tag) {
      var ops = groups[tag];
      if (!ops) {
        return;
      }
      var tagInfo = (doc.tags || []).filter(function (t) { return t.name === tag; })[0] || {};
      var ul = el('ul');
      toc.appendChild(el('h3', null, tag));
      toc.appendChild(ul);
      sections.appendChild(el('h2', null, tag, el('span', 'tagdesc', tagInfo.description || '')));
      ops.forEach(function (o) {
        var view = operationView(o.path, o.method, o.op);
        sections.appendChild(view);
        var a = link('#' + view.id, null);
        a.appendChild(el('span', 'method ' + o.method, o.method.toUpperCase()));
        a.appendChild(document.createTextNode(' ' + o.path));
        ul.appendChild(el('li', null, a));
      });
    });
    app.appendChild(toc);
    app.appendChild(sections);

    var comps = doc.components || {};
    app.appendChild(el('h2', null, 'Authentication'));
    Object.keys(comps.securitySchemes || {}).forEach(function (name) {
      var s = comps.securitySchemes[name];
      var sec = el('section', 'schemadef', el('h3', null, name), el('p', null, s.type + (s.scheme ? ' ' + s.scheme : '')), text(s.description));
      sec.id = 'security-' + name;
      app.appendChild(sec);
    });
    app.appendChild(el('h2', null, 'Schemas'));
    Object.keys(comps.schemas || {}).forEach(function (name) {
      var s = comps.schemas[name];
      var sec = el('section', 'schemadef', el('h3', null, name), text(s.description), schemaView(s, 0));
      sec.id = 'schema-' + name;
      app.appendChild(sec);
    });

    filter.addEventListener('input', function () {
      var q = filter.value.trim().toLowerCase();
      sections.querySelectorAll('details.op').forEach(function (d) {
        d.classList.toggle('hidden', q !== '' && d.getAttribute('data-search').indexOf(q) < 0);
      });
      toc.querySelectorAll('li').forEach(function (li) {
        var target = document.getElementById(li.firstChild.getAttribute('href').slice(1));
        li.classList.toggle('hidden', target.classList.contains('hidden'));
      });
    });
    openHash();
    window.addEventListener('hashchange', openHash);
  }

  // openHash expands and shows the operation or schema the URL points to.
  function openHash() {
    var target = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (!target) {
      return;
    }
    if (target.tagName === 'DETAILS') {
      target.open = true;
    }
    target.scrollIntoView();
  }

  var url = document.body.getAttribute('data-spec');
  fetch(url, { headers: { Accept: 'application/json' } })
    .then(function (resp) {
      if (!resp.ok) {
        throw new Error('GET ' + url + ' answered ' + resp.status);
      }
      return resp.json();
    })
    .then(render)
    .catch(function (err) {
      app.textContent = '';
      app.appendChild(el('p', 'notice error', 'Could not load the API description: ' + err.message));
    });
})();
