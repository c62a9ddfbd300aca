window.reportErrors = []; window.addEventListener('error', function (e) { window.reportErrors.push(String(e.message)); });
