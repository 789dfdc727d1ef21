// The budgets panel: each configured project's spend this period against its budget,
// and the alert thresholds it has passed.

import { clear, el, empty, money } from './helpers.js';
import { barRow } from './charts.js';

export function renderBudgets(box, rows) {
  if (!rows.length) {
    empty(box, 'No projects are configured. Add [projects.NAME] with budget = … to the config.');
    return;
  }
  clear(box);
  rows.forEach(function (b) {
    var attrs = { 'class': 'bar-row', 'data-budget-project': b.project };
    if (b.budget === null) {
      box.appendChild(barRow(attrs, b.project, 0, 'no budget', null));
      return;
    }
    var f = b.budget > 0 ? b.spent / b.budget : 1;
    var cls = f >= 1 ? 'over' : (f >= 0.8 ? 'near' : 'ok');
    var alerted = typeof b.alerted === 'number';
    if (alerted) attrs['data-alerted'] = b.alerted;
    var row = barRow(attrs, b.project + ' · per ' + b.period, f,
      money(b.spent) + ' of ' + money(b.budget) + ' (' + Math.round(f * 100) + '%)', cls);
    if (alerted) {
      var at = String(Math.round(b.alerted * 10000) / 100) + '%';
      row.querySelector('.name').appendChild(el('span', { 'class': 'badge alert',
        title: 'past the ' + at + ' alert threshold (alerts.thresholds) this period' },
        'alert ' + at));
    }
    box.appendChild(row);
  });
}
